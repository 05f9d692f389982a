/*
 * sm_tls.h - which way a TLS connection decides to trust the server, chosen
 * from the sketch's settings by rules the host tests check, and the parsing
 * of a certificate fingerprint. The ESP8266 adapter (sm_arduino.cpp) applies
 * the choice to BearSSL.
 *
 * The settings themselves may live in flash (PROGMEM), which the ESP8266 must
 * not read byte by byte with ordinary loads; so this file sees only whether
 * each one is set, and the adapter copies a fingerprint to RAM before parsing.
 */
#ifndef SMSERVER_TLS_H
#define SMSERVER_TLS_H

#include <stddef.h>
#include <stdint.h>

namespace smserver {

enum TrustMode {
  kTrustPlain,        // no TLS: http:// or MQTT without mqttTls
  kTrustCa,           // a CA certificate (PEM); needs the date (NTP)
  kTrustPublicKey,    // the server's public key (PEM); survives renewals that keep the key
  kTrustFingerprint,  // SHA-1 of one certificate; breaks at every renewal
  kTrustInsecure,     // no check at all: testing only
  kTrustMissing,      // TLS, but nothing to trust: refused at begin()
  kTrustAmbiguous     // more than one of CA, key and fingerprint: refused at begin()
};

/** Which trust settings of one connection are set. */
struct TrustSettings {
  bool caCert;
  bool publicKey;
  bool fingerprint;
  bool insecure;
};

/**
 * The mode for one connection. A CA, a key or a fingerprint wins over
 * `insecure` (so -DSMSERVER_HTTPS_INSECURE=1 never overrides a real check);
 * two or more of them are ambiguous.
 */
TrustMode selectTrust(bool tls, const TrustSettings& settings);

/** True for the modes begin() accepts. */
inline bool trustUsable(TrustMode mode) { return mode != kTrustMissing && mode != kTrustAmbiguous; }

/** CA validation checks certificate dates, so the clock must be set first. */
inline bool trustNeedsClock(TrustMode mode) { return mode == kTrustCa; }

/** "CA certificate", "public key", ... for log lines. */
const char* trustModeName(TrustMode mode);

const size_t kFingerprintSize = 20;  // SHA-1

/**
 * Parses 20 bytes written as 40 hex digits, optionally separated by ':' or
 * ' ' between bytes ("AB:CD:…", "ab cd …", "abcd…"). False for anything else.
 */
bool parseFingerprint(const char* text, uint8_t out[kFingerprintSize]);

}  // namespace smserver

#endif  // SMSERVER_TLS_H
