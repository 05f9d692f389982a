/* PubSubClient.h (stub) - the 2.8 API as built for ESP8266; see Arduino.h (stub). */
#ifndef STUB_PUBSUBCLIENT_H
#define STUB_PUBSUBCLIENT_H

#include "Arduino.h"

#define MQTT_CALLBACK_SIGNATURE std::function<void(char*, uint8_t*, unsigned int)> callback

class PubSubClient {
 public:
  PubSubClient();
  explicit PubSubClient(Client& client);
  PubSubClient& setServer(IPAddress ip, uint16_t port);
  PubSubClient& setServer(const char* domain, uint16_t port);
  PubSubClient& setCallback(MQTT_CALLBACK_SIGNATURE);
  PubSubClient& setClient(Client& client);
  PubSubClient& setKeepAlive(uint16_t keepAlive);
  PubSubClient& setSocketTimeout(uint16_t timeout);
  boolean setBufferSize(uint16_t size);
  uint16_t getBufferSize();
  boolean connect(const char* id, const char* user, const char* pass);
  void disconnect();
  boolean publish(const char* topic, const char* payload);
  boolean subscribe(const char* topic, uint8_t qos);
  boolean loop();
  boolean connected();
  int state();
};

#endif
