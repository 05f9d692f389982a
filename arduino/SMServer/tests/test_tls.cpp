/*
 * test_tls.cpp - how each connection's trust is chosen from the settings,
 * which modes need the clock, and fingerprint parsing.
 */
#include "sm_tls.h"
#include "test_framework.h"

using namespace smserver;

namespace {

TrustSettings with(bool ca, bool key, bool fingerprint, bool insecure) {
  TrustSettings s = {ca, key, fingerprint, insecure};
  return s;
}

}  // namespace

TEST(tls_plain_connections_need_no_trust) {
  CHECK_EQ(selectTrust(false, with(false, false, false, false)), kTrustPlain);
  CHECK_EQ(selectTrust(false, with(true, true, true, true)), kTrustPlain);  // settings unused without TLS
}

TEST(tls_selects_the_one_check_given) {
  CHECK_EQ(selectTrust(true, with(true, false, false, false)), kTrustCa);
  CHECK_EQ(selectTrust(true, with(false, true, false, false)), kTrustPublicKey);
  CHECK_EQ(selectTrust(true, with(false, false, true, false)), kTrustFingerprint);
  CHECK_EQ(selectTrust(true, with(false, false, false, true)), kTrustInsecure);
}

TEST(tls_a_real_check_wins_over_insecure) {
  // -DSMSERVER_HTTPS_INSECURE=1 flips the default; it must not undo a CA or key.
  CHECK_EQ(selectTrust(true, with(true, false, false, true)), kTrustCa);
  CHECK_EQ(selectTrust(true, with(false, true, false, true)), kTrustPublicKey);
  CHECK_EQ(selectTrust(true, with(false, false, true, true)), kTrustFingerprint);
}

TEST(tls_refuses_nothing_or_several_checks) {
  CHECK_EQ(selectTrust(true, with(false, false, false, false)), kTrustMissing);
  CHECK_EQ(selectTrust(true, with(true, true, false, false)), kTrustAmbiguous);
  CHECK_EQ(selectTrust(true, with(true, false, true, false)), kTrustAmbiguous);
  CHECK_EQ(selectTrust(true, with(false, true, true, true)), kTrustAmbiguous);
  CHECK(!trustUsable(kTrustMissing));
  CHECK(!trustUsable(kTrustAmbiguous));
  CHECK(trustUsable(kTrustPlain) && trustUsable(kTrustCa) && trustUsable(kTrustInsecure));
}

TEST(tls_only_ca_trust_needs_the_clock) {
  CHECK(trustNeedsClock(kTrustCa));
  CHECK(!trustNeedsClock(kTrustPublicKey));  // BearSSL's known-key check ignores dates
  CHECK(!trustNeedsClock(kTrustFingerprint));
  CHECK(!trustNeedsClock(kTrustInsecure));
  CHECK(!trustNeedsClock(kTrustPlain));
}

TEST(tls_mode_names) {
  CHECK_EQ(trustModeName(kTrustCa), "CA certificate");
  CHECK_EQ(trustModeName(kTrustPublicKey), "public key");
}

TEST(tls_parses_fingerprints) {
  const uint8_t expected[kFingerprintSize] = {0xAB, 0xCD, 0xEF, 0x01, 0x23, 0x45, 0x67, 0x89, 0x00, 0xFF,
                                              0x10, 0x20, 0x30, 0x40, 0x50, 0x60, 0x70, 0x80, 0x90, 0xA0};
  const char* good[] = {"AB:CD:EF:01:23:45:67:89:00:FF:10:20:30:40:50:60:70:80:90:A0",
                        "ab cd ef 01 23 45 67 89 00 ff 10 20 30 40 50 60 70 80 90 a0",
                        "abcdef012345678900ff102030405060708090a0"};
  for (size_t i = 0; i < 3; ++i) {
    uint8_t out[kFingerprintSize] = {0};
    CHECK(parseFingerprint(good[i], out));
    CHECK_EQ(memcmp(out, expected, kFingerprintSize), 0);
  }
}

TEST(tls_refuses_malformed_fingerprints) {
  const char* bad[] = {NULL, "", "AB:CD", "AB:CD:EF:01:23:45:67:89:00:FF:10:20:30:40:50:60:70:80:90",
                       "AB:CD:EF:01:23:45:67:89:00:FF:10:20:30:40:50:60:70:80:90:A0:",
                       "AB:CD:EF:01:23:45:67:89:00:FF:10:20:30:40:50:60:70:80:90:A0:11",
                       "AB::CD:EF:01:23:45:67:89:00:FF:10:20:30:40:50:60:70:80:90:A0",
                       "GB:CD:EF:01:23:45:67:89:00:FF:10:20:30:40:50:60:70:80:90:A0",
                       "A:BCD:EF:01:23:45:67:89:00:FF:10:20:30:40:50:60:70:80:90:A0",
                       "SHA256 96:BC:EC:06:26:49:76:F3:74:60:77:9A:CF:28:C5:A7"};
  for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); ++i) {
    uint8_t out[kFingerprintSize];
    CHECK(!parseFingerprint(bad[i], out));
  }
}
