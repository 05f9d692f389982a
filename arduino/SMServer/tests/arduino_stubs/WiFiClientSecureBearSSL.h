/* WiFiClientSecureBearSSL.h (stub) - see Arduino.h (stub). */
#ifndef STUB_WIFICLIENTSECUREBEARSSL_H
#define STUB_WIFICLIENTSECUREBEARSSL_H

#include "ESP8266WiFi.h"

namespace BearSSL {

class X509List {
 public:
  X509List();
  explicit X509List(const char* pemCert);
  bool append(const char* pemCert);
};

class WiFiClientSecure : public WiFiClient {
 public:
  WiFiClientSecure();
  bool setFingerprint(const char* fpStr);
  void setInsecure();
  void setTrustAnchors(const X509List* ta);
};

}  // namespace BearSSL

#endif
