/*
 * test_kvstore.cpp - the EEPROM key-value store: blank, foreign and corrupted
 * images read as empty; round trips; in-place updates; at most one commit
 * per call and none when no byte changes; all-or-nothing writes; the RAM copy
 * touched only between open() and close().
 */
#include <string>
#include <vector>

#include "fakes.h"
#include "sm_kvstore.h"
#include "test_framework.h"

using smserver::EepromKeyValueStore;
using smserver::KeyValue;

TEST(kv_blank_eeprom_reads_empty) {
  for (int fill = 0; fill <= 0xFF; fill += 0xFF) {
    MemoryStorage eeprom(512, static_cast<uint8_t>(fill));
    EepromKeyValueStore store(eeprom, 0, 512);
    char out[32] = "x";
    CHECK(!store.valid());
    CHECK(!store.get("token", out, sizeof(out)));
    CHECK_EQ(out, "");
    CHECK_EQ(eeprom.commits, 0);  // reading never writes
  }
}

TEST(kv_foreign_signature_reads_empty) {
  MemoryStorage eeprom(512, 0);
  const char other[] = "SSID=home;PASS=secret;";  // another sketch's data
  for (size_t i = 0; i < sizeof(other); ++i) eeprom.bytes[i] = static_cast<uint8_t>(other[i]);
  EepromKeyValueStore store(eeprom, 0, 512);
  char out[32];
  CHECK(!store.get("token", out, sizeof(out)));
  CHECK(store.put("token", "abc"));  // a put formats the area
  CHECK(store.get("token", out, sizeof(out)));
  CHECK_EQ(out, "abc");
}

TEST(kv_round_trip_and_update) {
  MemoryStorage eeprom;
  EepromKeyValueStore store(eeprom, 0, 512);
  char out[64];
  CHECK(store.put("uuid", "123e4567-e89b-12d3-a456-426614174000"));
  CHECK(store.put("token", "first"));
  CHECK(store.put("token", "a-much-longer-second-value"));
  CHECK(store.put("token", "3rd"));
  CHECK(store.get("uuid", out, sizeof(out)));
  CHECK_EQ(out, "123e4567-e89b-12d3-a456-426614174000");
  CHECK(store.get("token", out, sizeof(out)));
  CHECK_EQ(out, "3rd");
  CHECK(store.remove("uuid"));
  CHECK(!store.get("uuid", out, sizeof(out)));
  CHECK(store.get("token", out, sizeof(out)));
  CHECK_EQ(out, "3rd");
  CHECK(store.remove("absent"));

  // A reboot: a new store object over the same bytes sees the same data.
  EepromKeyValueStore again(eeprom, 0, 512);
  CHECK(again.get("token", out, sizeof(out)));
  CHECK_EQ(out, "3rd");
}

TEST(kv_corrupted_checksum_reads_empty) {
  MemoryStorage eeprom;
  EepromKeyValueStore store(eeprom, 0, 512);
  CHECK(store.put("token", "abcdef"));
  char out[32];
  // Flip one payload byte: the CRC no longer matches.
  eeprom.bytes[EepromKeyValueStore::kHeaderSize + 3] ^= 0x01;
  CHECK(!store.valid());
  CHECK(!store.get("token", out, sizeof(out)));
  // Restore it, then damage the stored CRC itself.
  eeprom.bytes[EepromKeyValueStore::kHeaderSize + 3] ^= 0x01;
  CHECK(store.get("token", out, sizeof(out)));
  eeprom.bytes[8] ^= 0x80;
  CHECK(!store.get("token", out, sizeof(out)));
}

TEST(kv_bad_length_or_version_reads_empty) {
  MemoryStorage eeprom;
  EepromKeyValueStore store(eeprom, 0, 512);
  CHECK(store.put("token", "abc"));
  char out[32];
  eeprom.bytes[4] = 99;  // unknown format version
  CHECK(!store.get("token", out, sizeof(out)));
  eeprom.bytes[4] = 1;
  eeprom.bytes[6] = 0x7F;  // payload length beyond the area
  CHECK(!store.get("token", out, sizeof(out)));
}

TEST(kv_unchanged_put_does_not_commit) {
  MemoryStorage eeprom;
  EepromKeyValueStore store(eeprom, 0, 512);
  CHECK(store.put("token", "same"));
  CHECK_EQ(eeprom.commits, 1);  // formatting the blank area and the record: one commit
  CHECK(store.put("token", "same"));
  CHECK_EQ(eeprom.commits, 1);
  CHECK(store.put("token", "diff"));  // same length, other bytes
  CHECK_EQ(eeprom.commits, 2);
}

TEST(kv_put_all_commits_once_and_only_on_change) {
  MemoryStorage eeprom;
  EepromKeyValueStore store(eeprom, 0, 512);
  KeyValue pairs[] = {{"uuid", "123e4567-e89b-12d3-a456-426614174000"}, {"token", "t1"}};
  CHECK(store.putAll(pairs, 2));
  CHECK_EQ(eeprom.commits, 1);
  CHECK(store.putAll(pairs, 2));
  CHECK_EQ(eeprom.commits, 1);
  pairs[1].value = "t2";
  CHECK(store.putAll(pairs, 2));
  CHECK_EQ(eeprom.commits, 2);
  char out[64];
  CHECK(store.get("uuid", out, sizeof(out)));
  CHECK_EQ(out, "123e4567-e89b-12d3-a456-426614174000");
  CHECK(store.get("token", out, sizeof(out)));
  CHECK_EQ(out, "t2");
  CHECK_EQ(eeprom.accessWhileClosed, 0);
  CHECK(!eeprom.isOpen);
}

TEST(kv_put_all_is_all_or_nothing) {
  MemoryStorage eeprom(64);
  EepromKeyValueStore store(eeprom, 0, 64);
  CHECK(store.put("a", "1"));
  std::vector<uint8_t> before = eeprom.bytes;
  std::string big(40, 'x');
  KeyValue pairs[] = {{"b", "2"}, {"token", big.c_str()}};  // the first fits, both do not
  CHECK(!store.putAll(pairs, 2));
  CHECK(eeprom.bytes == before);
  CHECK_EQ(eeprom.commits, 1);
  KeyValue twice[] = {{"k", "1"}, {"k", "2"}};
  CHECK(!store.putAll(twice, 2));
  KeyValue nullValue[] = {{"k", NULL}};
  CHECK(!store.putAll(nullValue, 1));
  CHECK(eeprom.bytes == before);
}

TEST(kv_remove_and_clear_commit_only_what_changes) {
  MemoryStorage eeprom;
  EepromKeyValueStore store(eeprom, 0, 512);
  CHECK(store.clear());
  CHECK_EQ(eeprom.commits, 1);
  CHECK(store.clear());  // already an empty store
  CHECK_EQ(eeprom.commits, 1);
  CHECK(store.remove("absent"));
  CHECK_EQ(eeprom.commits, 1);
  CHECK(store.put("token", "x"));
  CHECK(store.remove("token"));
  CHECK_EQ(eeprom.commits, 3);
  CHECK_EQ(eeprom.accessWhileClosed, 0);
}

TEST(kv_unavailable_storage_is_refused_not_touched) {
  MemoryStorage eeprom;
  eeprom.available = false;  // e.g. the sketch opened EEPROM with too few bytes
  EepromKeyValueStore store(eeprom, 0, 512);
  char out[8];
  CHECK(!store.put("k", "v"));
  CHECK(!store.get("k", out, sizeof(out)));
  CHECK(!store.remove("k"));
  CHECK(!store.valid());
  CHECK_EQ(eeprom.commits, 0);
  CHECK_EQ(eeprom.accessWhileClosed, 0);
}

TEST(kv_refuses_what_does_not_fit) {
  MemoryStorage eeprom(64);
  EepromKeyValueStore store(eeprom, 0, 64);
  CHECK(store.put("k", "small"));
  std::string big(60, 'x');
  CHECK(!store.put("token", big.c_str()));
  char out[8];
  CHECK(store.get("k", out, sizeof(out)));  // the old data survives
  CHECK_EQ(out, "small");
  char tiny[3];
  CHECK(!store.get("k", tiny, sizeof(tiny)));  // caller's buffer too small
  CHECK(!store.put("", "empty key"));
}

TEST(kv_respects_its_offset) {
  MemoryStorage eeprom(256, 0xAB);
  EepromKeyValueStore store(eeprom, 100, 100);
  CHECK(store.put("token", "abc"));
  for (size_t i = 0; i < 100; ++i) CHECK_EQ(static_cast<int>(eeprom.bytes[i]), 0xAB);
  for (size_t i = 200; i < 256; ++i) CHECK_EQ(static_cast<int>(eeprom.bytes[i]), 0xAB);
  EepromKeyValueStore outOfRange(eeprom, 300, 100);  // beyond the EEPROM: unusable, not a crash
  char out[8];
  CHECK(!outOfRange.put("k", "v"));
  CHECK(!outOfRange.get("k", out, sizeof(out)));
}

TEST(kv_crc_matches_zlib) {
  uint32_t crc = 0xFFFFFFFFu;
  const char* text = "123456789";
  for (const char* p = text; *p; ++p) crc = smserver::crc32Update(crc, static_cast<uint8_t>(*p));
  CHECK_EQ(crc ^ 0xFFFFFFFFu, 0xCBF43926u);  // the standard check value
}
