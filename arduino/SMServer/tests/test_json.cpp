/*
 * test_json.cpp - the core's JSON field reader on the server's answers and on
 * hostile input (run under AddressSanitizer by the Makefile).
 */
#include <string>

#include "sm_json.h"
#include "test_framework.h"

using smserver::jsonGetString;

TEST(json_reads_top_level_strings) {
  char out[64];
  CHECK(jsonGetString("{\"c\":\"OK\",\"t\":\"abc.def.ghi\"}", "t", out, sizeof(out)));
  CHECK_EQ(out, "abc.def.ghi");
  CHECK(jsonGetString(" {\n \"c\" : \"OK\" , \"ip\":\"broker:1883\" } ", "ip", out, sizeof(out)));
  CHECK_EQ(out, "broker:1883");
}

TEST(json_skips_nested_and_non_string_values) {
  char out[16];
  const char* text = "{\"x\":{\"c\":\"NO\",\"a\":[1,{\"c\":\"NO\"}]},\"n\":-1.5e3,\"b\":true,\"z\":null,\"c\":\"OK\"}";
  CHECK(jsonGetString(text, "c", out, sizeof(out)));
  CHECK_EQ(out, "OK");
  CHECK(!jsonGetString(text, "n", out, sizeof(out)));  // a number is not a string
  CHECK(!jsonGetString(text, "x", out, sizeof(out)));
  CHECK(!jsonGetString(text, "missing", out, sizeof(out)));
}

TEST(json_unescapes) {
  char out[32];
  CHECK(jsonGetString("{\"k\":\"a\\\"b\\\\c\\/d\\u00e9\\n\"}", "k", out, sizeof(out)));
  CHECK_EQ(out, "a\"b\\c/d\xc3\xa9\n");
}

TEST(json_refuses_values_that_do_not_fit) {
  char out[4];
  CHECK(!jsonGetString("{\"t\":\"abcd\"}", "t", out, sizeof(out)));
  CHECK_EQ(out, "");
  CHECK(jsonGetString("{\"t\":\"abc\"}", "t", out, sizeof(out)));
  CHECK_EQ(out, "abc");
}

TEST(json_rejects_malformed_input) {
  char out[16];
  const char* bad[] = {"",        "[]",          "\"c\"",         "{\"c\"}",          "{\"c\":\"OK",
                       "{\"c\":",  "{\"c\":\"\\x\"}", "{\"c\":\"\\u12\"}", "{\"a\":1 \"c\":\"OK\"}",
                       "{\"a\":[1,2,\"c\":\"OK\"}", "not json", "{\"c\":OK}"};
  for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); ++i) {
    CHECK(!jsonGetString(bad[i], "c", out, sizeof(out)));
  }
}

TEST(json_respects_the_length_bound) {
  // Not NUL-terminated where the length says it ends: an MQTT payload.
  const char text[] = "{\"c\":\"PING\"}garbage";
  char out[16];
  CHECK(jsonGetString(text, 12, "c", out, sizeof(out)));
  CHECK_EQ(out, "PING");
  CHECK(!jsonGetString(text, 10, "c", out, sizeof(out)));  // cut inside the value
}

TEST(json_limits_nesting) {
  std::string deep = "{\"a\":";
  for (int i = 0; i < 1000; ++i) deep += "[";
  deep += "1";
  for (int i = 0; i < 1000; ++i) deep += "]";
  deep += ",\"c\":\"OK\"}";
  char out[8];
  CHECK(!jsonGetString(deep.c_str(), "c", out, sizeof(out)));  // refused, not a stack overflow
}

TEST(json_extracts_in_place) {
  // The client reads the registration answer into its token buffer and
  // extracts the token over it: writes never overtake the reading position.
  char buffer[64] = "{\"c\":\"OK\",\"t\":\"a\\u00e9b.c\\\"d\"}";
  CHECK(jsonGetString(buffer, "t", buffer, sizeof(buffer)));
  CHECK_EQ(buffer, "a\xc3\xa9" "b.c\"d");
}
