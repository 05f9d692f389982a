/*
 * sm_tls.cpp - trust selection and fingerprint parsing (see sm_tls.h).
 */
#include "sm_tls.h"

#include "sm_interfaces.h"

#include <string.h>

namespace smserver {
namespace {

int hexValue(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

}  // namespace

TrustMode selectTrust(bool tls, const TrustSettings& settings) {
  if (!tls) return kTrustPlain;
  int checks = (settings.caCert ? 1 : 0) + (settings.publicKey ? 1 : 0) + (settings.fingerprint ? 1 : 0);
  if (checks > 1) return kTrustAmbiguous;
  if (settings.caCert) return kTrustCa;
  if (settings.publicKey) return kTrustPublicKey;
  if (settings.fingerprint) return kTrustFingerprint;
  return settings.insecure ? kTrustInsecure : kTrustMissing;
}

const char* trustModeName(TrustMode mode) {
  switch (mode) {
    case kTrustPlain: return SM_PSTR("no TLS");
    case kTrustCa: return SM_PSTR("CA certificate");
    case kTrustPublicKey: return SM_PSTR("public key");
    case kTrustFingerprint: return SM_PSTR("certificate fingerprint");
    case kTrustInsecure: return SM_PSTR("INSECURE (no check)");
    case kTrustMissing: return SM_PSTR("nothing to trust");
    case kTrustAmbiguous: return SM_PSTR("more than one trust setting");
  }
  return "?";
}

bool parseFingerprint(const char* text, uint8_t out[kFingerprintSize]) {
  if (text == NULL) return false;
  const char* p = text;
  for (size_t i = 0; i < kFingerprintSize; ++i) {
    if (i > 0 && (*p == ':' || *p == ' ')) ++p;
    int high = hexValue(p[0]);
    int low = high < 0 ? -1 : hexValue(p[1]);
    if (low < 0) return false;
    out[i] = static_cast<uint8_t>(high * 16 + low);
    p += 2;
  }
  return *p == '\0';
}

}  // namespace smserver
