/*
 * test_http.cpp - the HTTP client's portable half: server URLs, the request
 * head, and the answer reader on good, chunked, oversized and hostile input
 * (run under AddressSanitizer by the Makefile). The reader must never keep
 * more than bodySize-1 bytes of body, nor read on once that is exceeded.
 */
#include <string>
#include <vector>

#include "sm_http.h"
#include "test_framework.h"

using namespace smserver;

namespace {

struct Parsed {
  bool done, failed, truncated;
  int status;
  long retryAfter;
  std::string body;
  size_t consumed;  // bytes the parser took before it said "done"
};

// Feeds `raw` in pieces of `step` bytes; closes the connection at the end when `close`.
Parsed parse(const std::string& raw, size_t bodySize = 64, size_t step = 0, bool close = true) {
  std::vector<char> body(bodySize, '#');
  HttpResponseParser parser(body.data(), body.size());
  size_t consumed = 0;
  size_t piece = step == 0 ? raw.size() : step;
  for (size_t at = 0; at < raw.size() && !parser.done(); at += piece) {
    size_t n = raw.size() - at < piece ? raw.size() - at : piece;
    consumed += parser.feed(raw.data() + at, n);
  }
  if (close && !parser.done()) parser.closed();
  Parsed p = {parser.done(), parser.failed(), parser.truncated(), parser.status(),
              parser.retryAfterSeconds(), std::string(body.data(), parser.bodyLength()), consumed};
  CHECK(parser.bodyLength() < bodySize);
  CHECK_EQ(body[parser.bodyLength()], '\0');  // always NUL-terminated
  return p;
}

const std::string kOkJson = "{\"c\":\"OK\",\"ip\":\"broker:1883\"}";

std::string withLength(const std::string& status, const std::string& body, const std::string& extra = "") {
  return "HTTP/1.1 " + status + "\r\nContent-Type: application/json\r\n" + extra +
         "Content-Length: " + std::to_string(body.size()) + "\r\n\r\n" + body;
}

}  // namespace

// ------------------------------------------------------------------ URLs

TEST(http_parses_server_urls) {
  ServerUrl u;
  CHECK(parseServerUrl("http://192.168.1.10:5000", u));
  CHECK(!u.tls);
  CHECK_EQ(u.host, "192.168.1.10");
  CHECK_EQ(u.port, 5000);
  CHECK_EQ(u.baseLength, 0u);
  CHECK(parseServerUrl("https://iot.example.com/", u));
  CHECK(u.tls);
  CHECK_EQ(u.port, 443);
  CHECK_EQ(u.baseLength, 0u);
  CHECK(parseServerUrl("HTTPS://iot.example.com/api/v1//", u));
  CHECK_EQ(std::string(u.base, u.baseLength), "/api/v1");
  CHECK(parseServerUrl("http://[fd00::1]:8080", u));
  CHECK_EQ(u.host, "fd00::1");
  CHECK_EQ(u.port, 8080);
  CHECK(parseServerUrl("http://example.com", u));
  CHECK_EQ(u.port, 80);
}

TEST(http_refuses_unusable_urls) {
  ServerUrl u;
  const char* bad[] = {NULL, "", "ftp://x", "example.com", "http://", "http://:80", "http://x:0",
                       "http://x:65536", "http://x:8o", "http://x:", "http://user:pw@x",
                       "http://x/a?b=1", "http://x/#top", "http://x y", "http://[::1",
                       "http://[::1]x"};
  for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); ++i) {
    bool ok = parseServerUrl(bad[i], u);
    if (ok) std::cout << "    accepted: " << bad[i] << "\n";
    CHECK(!ok);
  }
  std::string longHost = "http://" + std::string(kUrlHostSize, 'a');
  CHECK(!parseServerUrl(longHost.c_str(), u));
}

TEST(http_request_head_closes_the_connection) {
  ServerUrl u;
  char head[256];
  CHECK(parseServerUrl("https://iot.example.com/api/", u));
  size_t n = formatRequestHead(u, "/mqtt", head, sizeof(head));
  CHECK_EQ(std::string(head, n),
           "GET /api/mqtt HTTP/1.1\r\nHost: iot.example.com\r\nUser-Agent: SMServer/" SMSERVER_VERSION
           "\r\nConnection: close\r\nAuthorization: Bearer ");
  CHECK(parseServerUrl("http://[::1]:5000", u));
  n = formatRequestHead(u, "/auth/devices/request?uuid=x", head, sizeof(head));
  CHECK(std::string(head, n).find("GET /auth/devices/request?uuid=x HTTP/1.1\r\nHost: [::1]:5000\r\n") == 0);
  CHECK_EQ(formatRequestHead(u, "/mqtt", head, 20), 0u);  // does not fit
  CHECK_EQ(formatRequestHead(u, "mqtt", head, sizeof(head)), 0u);
  CHECK_EQ(std::string(kRequestEnd), "\r\n\r\n");
}

TEST(http_error_names) {
  CHECK_EQ(httpErrorName(kHttpErrorTls), "TLS handshake failed");
  CHECK_EQ(httpErrorName(kHttpErrorDns), "DNS lookup failed");
  CHECK_EQ(httpErrorName(-99), "network error");
}

// --------------------------------------------------------------- answers

TEST(http_reads_a_content_length_answer) {
  Parsed p = parse(withLength("200 OK", kOkJson));
  CHECK(p.done && !p.failed && !p.truncated);
  CHECK_EQ(p.status, 200);
  CHECK_EQ(p.body, kOkJson);
  CHECK_EQ(p.retryAfter, -1L);
  // Byte by byte, the same.
  Parsed q = parse(withLength("200 OK", kOkJson), 64, 1, false);
  CHECK(q.done);
  CHECK_EQ(q.body, kOkJson);
}

TEST(http_stops_at_the_end_of_the_body) {
  std::string raw = withLength("200 OK", kOkJson) + "garbage after the body";
  Parsed p = parse(raw, 64, 0, false);
  CHECK(p.done && !p.failed);
  CHECK_EQ(p.body, kOkJson);
  CHECK_EQ(p.consumed, raw.size() - std::string("garbage after the body").size());
}

TEST(http_reads_chunked_answers) {
  std::string raw =
      "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
      "a\r\n{\"c\":\"OK\",\r\n"
      "13;ext=1\r\n\"ip\":\"broker:1883\"}\r\n"
      "0\r\nX-Trailer: 1\r\n\r\n";
  for (size_t step = 0; step <= 7; ++step) {
    Parsed p = parse(raw, 64, step, false);
    CHECK(p.done && !p.failed && !p.truncated);
    CHECK_EQ(p.body, kOkJson);
  }
}

TEST(http_reads_a_body_that_ends_with_the_connection) {
  std::string raw = "HTTP/1.0 403 FORBIDDEN\r\n\r\n{\"c\":\"FORBIDDEN\"}";
  Parsed open = parse(raw, 64, 0, false);
  CHECK(!open.done);  // could be more: wait for the close
  Parsed p = parse(raw);
  CHECK(p.done && !p.failed);
  CHECK_EQ(p.status, 403);
  CHECK_EQ(p.body, "{\"c\":\"FORBIDDEN\"}");
}

TEST(http_truncates_rather_than_reads_an_oversized_body) {
  const size_t bodySize = 32;
  std::string big(1000, 'x');
  // Content-Length known to be too large: not one body byte is taken.
  std::string raw = withLength("200 OK", big);
  Parsed p = parse(raw, bodySize, 0, false);
  CHECK(p.done && p.truncated && !p.failed);
  CHECK_EQ(p.status, 200);
  CHECK_EQ(p.body, "");
  CHECK_EQ(p.consumed, raw.size() - big.size());
  // Exactly bodySize-1 fits.
  Parsed fits = parse(withLength("200 OK", std::string(bodySize - 1, 'y')), bodySize);
  CHECK(!fits.truncated);
  CHECK_EQ(fits.body.size(), bodySize - 1);
  // Without a length: reading stops as soon as the buffer would overflow.
  std::string untilClose = "HTTP/1.1 200 OK\r\n\r\n" + big;
  Parsed q = parse(untilClose, bodySize, 7, false);
  CHECK(q.done && q.truncated);
  CHECK_EQ(q.body, "");
  CHECK(q.consumed <= untilClose.size() - big.size() + bodySize + 7);
  // Chunked: a chunk that cannot fit ends the reading before its data.
  std::string chunked = "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n10\r\n0123456789abcdef\r\n3e8\r\n" + big;
  Parsed c = parse(chunked, bodySize, 0, false);
  CHECK(c.done && c.truncated);
  CHECK_EQ(c.body, "");
  CHECK_EQ(c.consumed, chunked.size() - big.size());
}

TEST(http_reads_retry_after) {
  CHECK_EQ(parse(withLength("429 TOO MANY REQUESTS", "{}", "Retry-After: 7\r\n")).retryAfter, 7L);
  CHECK_EQ(parse(withLength("429 X", "{}", "retry-after:   120  \r\n")).retryAfter, 120L);
  CHECK_EQ(parse(withLength("429 X", "{}", "Retry-After: Wed, 21 Oct 2015 07:28:00 GMT\r\n")).retryAfter, -1L);
  CHECK_EQ(parse(withLength("429 X", "{}", "Retry-After: 999999999999\r\n")).retryAfter, -1L);
  CHECK_EQ(parse(withLength("429 X", "{}", "Retry-After: -5\r\n")).retryAfter, -1L);
}

TEST(http_skips_interim_answers_and_empty_statuses) {
  Parsed p = parse("HTTP/1.1 100 Continue\r\nRetry-After: 9\r\n\r\n" + withLength("200 OK", "{}"));
  CHECK_EQ(p.status, 200);
  CHECK_EQ(p.body, "{}");
  CHECK_EQ(p.retryAfter, -1L);  // the interim answer's headers do not count
  Parsed none = parse("HTTP/1.1 204 No Content\r\n\r\n", 64, 0, false);
  CHECK(none.done && !none.failed);
}

TEST(http_ignores_long_and_unknown_header_lines) {
  std::string longLine = "X-Long: " + std::string(1000, 'z') + "\r\n";
  Parsed p = parse(withLength("200 OK", kOkJson, longLine + "Set-Cookie: a=b\r\n"));
  CHECK(!p.failed);
  CHECK_EQ(p.body, kOkJson);
  Parsed bare = parse("HTTP/1.1 200 OK\nContent-Length: 2\n\n{}", 64, 0, false);  // bare LF
  CHECK(bare.done && !bare.failed);
  CHECK_EQ(bare.body, "{}");
}

TEST(http_refuses_malformed_answers) {
  const char* bad[] = {
      "<html>captive portal</html>\r\n\r\n",
      "HTTP/2 200\r\n\r\n",
      "HTTP/1.1 20 OK\r\n\r\n",
      "HTTP/1.1 2000 OK\r\n\r\n",
      "HTTP/1.1 600 X\r\n\r\n",
      "HTTP/1.1 101 Switching Protocols\r\n\r\n",
      "HTTP/1.1 200 OK\r\nContent-Length: 12x\r\n\r\n{}",
      "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\n{}",
      "HTTP/1.1 200 OK\r\nContent-Length: 99999999999\r\n\r\n{}",
      "HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n{}",
      "HTTP/1.1 200 OK\r\nTransfer-Encoding: xchunked\r\n\r\n{}",
      "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
      "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{}XX0\r\n\r\n",
      "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nfffffffff\r\n",
      "HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n{}",  // closed early
      "HTTP/1.1 200 OK\r\nContent-Type: a",             // closed inside the headers
  };
  for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); ++i) {
    Parsed p = parse(bad[i]);
    if (!p.failed) std::cout << "    accepted #" << i << "\n";
    CHECK(p.done && p.failed);
    CHECK_EQ(p.body.size() <= 63u, true);
  }
}

TEST(http_bounds_the_header_it_reads) {
  std::string raw = "HTTP/1.1 200 OK\r\n";
  while (raw.size() < 2 * HttpResponseParser::kMaxHeaderBytes) raw += "X-Filler: 0123456789\r\n";
  Parsed p = parse(raw, 64, 0, false);
  CHECK(p.done && p.failed);
  CHECK(p.consumed <= HttpResponseParser::kMaxHeaderBytes + 1);
}

TEST(http_survives_hostile_bytes) {
  // Every byte value, at every split, never reads or writes out of bounds (ASan).
  uint32_t state = 2463534242u;
  for (int round = 0; round < 300; ++round) {
    std::string raw = round % 3 == 0 ? "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
                      : round % 3 == 1 ? "HTTP/1.1 200 OK\r\nContent-Length: 40\r\n\r\n"
                                       : "";
    for (int i = 0; i < 200; ++i) {
      state ^= state << 13;
      state ^= state >> 17;
      state ^= state << 5;
      const char alphabet[] = "0123456789abcdefABCDEF\r\n:; \t{}\"HTTP/1.\x00\xff";
      raw += alphabet[state % (sizeof(alphabet) - 1)];
    }
    Parsed p = parse(raw, 1 + state % 48, 1 + state % 13, round % 2 == 0);
    CHECK(p.body.size() < 48u);
  }
}

TEST(http_parser_needs_a_buffer) {
  HttpResponseParser parser(NULL, 0);
  CHECK(parser.done() && parser.failed());
}
