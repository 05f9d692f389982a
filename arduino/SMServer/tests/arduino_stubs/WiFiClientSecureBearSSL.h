/* WiFiClientSecureBearSSL.h (stub) - see Arduino.h (stub). */
#ifndef STUB_WIFICLIENTSECUREBEARSSL_H
#define STUB_WIFICLIENTSECUREBEARSSL_H

#include "ESP8266WiFi.h"

#define BR_ERR_TOO_LARGE 6
#define BR_ERR_RECV_FATAL_ALERT 256
#define BR_ERR_SEND_FATAL_ALERT 512

struct br_ssl_client_context {
  unsigned char opaque[3500];
};
struct br_x509_minimal_context {
  unsigned char opaque[3000];
};

namespace BearSSL {

class X509List {
 public:
  X509List();
  ~X509List();
  bool append(const char* pemCert);
  size_t getCount() const;
};

class PublicKey {
 public:
  PublicKey();
  ~PublicKey();
  bool parse(const char* pemKey);
  bool isRSA() const;
  bool isEC() const;
};

class WiFiClientSecureCtx : public WiFiClient {
 public:
  WiFiClientSecureCtx();
  ~WiFiClientSecureCtx() override;
  int connect(IPAddress ip, uint16_t port) override;
  int connect(const char* name, uint16_t port) override;
  void stop() override;
  void setBufferSizes(int recv, int xmit);
  void setInsecure();
  void setKnownKey(const PublicKey* pk, unsigned usages = 0);
  bool setFingerprint(const uint8_t fingerprint[20]);
  void setTrustAnchors(const X509List* ta);
  int getMFLNStatus();
  int getLastSSLError(char* dest = NULL, size_t len = 0);
};

}  // namespace BearSSL

#endif
