/* ESP8266HTTPClient.h (stub) - see Arduino.h (stub). */
#ifndef STUB_ESP8266HTTPCLIENT_H
#define STUB_ESP8266HTTPCLIENT_H

#include "ESP8266WiFi.h"

#define HTTPC_ERROR_CONNECTION_FAILED (-1)

class HTTPClient {
 public:
  HTTPClient();
  ~HTTPClient();
  bool begin(WiFiClient& client, const String& url);
  void end(void);
  void setTimeout(uint16_t timeout);
  void addHeader(const String& name, const String& value, bool first = false, bool replace = true);
  void collectHeaders(const char* headerKeys[], const size_t headerKeysCount);
  String header(const char* name);
  int GET();
  int getSize(void);
  const String& getString(void);
};

#endif
