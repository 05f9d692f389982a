/* ESP8266WiFi.h (stub) - see Arduino.h (stub). */
#ifndef STUB_ESP8266WIFI_H
#define STUB_ESP8266WIFI_H

#include "Arduino.h"

enum wl_status_t { WL_IDLE_STATUS = 0, WL_CONNECTED = 3, WL_DISCONNECTED = 6 };
enum WiFiMode_t { WIFI_OFF = 0, WIFI_STA = 1 };

class WiFiClient : public Client {
 public:
  WiFiClient();
  virtual ~WiFiClient();
  size_t write(uint8_t c);
};

class ESP8266WiFiClass {
 public:
  bool mode(WiFiMode_t mode);
  wl_status_t begin(const char* ssid, const char* passphrase = NULL);
  wl_status_t status();
  IPAddress localIP();
  int32_t RSSI();
};
extern ESP8266WiFiClass WiFi;

#endif
