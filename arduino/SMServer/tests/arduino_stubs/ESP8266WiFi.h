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
  int connect(IPAddress ip, uint16_t port) override;
  int connect(const char* host, uint16_t port) override;
  size_t write(uint8_t c) override;
  size_t write(const uint8_t* buffer, size_t size) override;
  int available() override;
  int read() override;
  int read(uint8_t* buffer, size_t size) override;
  int peek() override;
  void flush() override;
  void stop() override;
  uint8_t connected() override;
  void setNoDelay(bool nodelay);
};

class ESP8266WiFiClass {
 public:
  bool mode(WiFiMode_t mode);
  wl_status_t begin(const char* ssid, const char* passphrase = NULL);
  wl_status_t status();
  IPAddress localIP();
  int32_t RSSI();
  uint8_t* macAddress(uint8_t* mac);
  int hostByName(const char* host, IPAddress& result, uint32_t timeout_ms);
};
extern ESP8266WiFiClass WiFi;

#endif
