/*
 * sm_arduino.h - the ESP8266 side: thin adapters from the core's interfaces
 * to millis(), ESP8266HTTPClient, PubSubClient, EEPROM and Serial, and the
 * SMServer class that sketches use. Compiled only for ESP8266 Arduino builds;
 * the host tests never see it.
 */
#ifndef SMSERVER_ARDUINO_H
#define SMSERVER_ARDUINO_H

#if defined(ARDUINO) && defined(ESP8266)

#include <Arduino.h>
#include <ArduinoJson.h>
#include <ESP8266HTTPClient.h>
#include <ESP8266WiFi.h>
#include <PubSubClient.h>
#include <WiFiClientSecureBearSSL.h>

#include "sm_client.h"
#include "sm_kvstore.h"

// The CONNECT packet carries the token (~430 bytes) as the password, more than
// PubSubClient's default 256-byte buffer, which would silently drop it.
#ifndef SMSERVER_MQTT_BUFFER
#define SMSERVER_MQTT_BUFFER 1024
#endif

// Compile-time default for SMServerConfig::httpsInsecure (testing only).
#ifndef SMSERVER_HTTPS_INSECURE
#define SMSERVER_HTTPS_INSECURE 0
#endif

/** Everything a sketch configures; the timing fields come from Settings. */
struct SMServerConfig : public smserver::Settings {
  SMServerConfig();
  const char* serverUrl;         // "http://192.168.1.10:5000" or "https://iot.example.com"
  // HTTPS (serverUrl starting with https://): pin the server certificate's
  // SHA-1 fingerprint ("AB:CD:..."), or trust a CA (PEM), or, for testing
  // only, skip verification.
  const char* httpsFingerprint;
  const char* httpsCaCert;
  bool httpsInsecure;
  // MQTT over TLS: the broker must listen with TLS at the /mqtt address.
  bool mqttTls;
  const char* mqttFingerprint;
  const char* mqttCaCert;
  bool mqttInsecure;
  uint16_t httpTimeoutMs;   // bounds each HTTP call (they block while they run)
  uint16_t mqttTimeoutS;    // bounds an MQTT connect attempt
  size_t eepromOffset;      // first EEPROM byte of the token store
  size_t eepromSize;        // bytes it may use (1024: a token is ~430 bytes)
  Print* log;               // &Serial by default; NULL for silence
};

namespace smserver {

class ArduinoClock : public Clock {
 public:
  uint32_t millis() { return ::millis(); }
};

class SerialLog : public Log {
 public:
  SerialLog() : out_(NULL) {}
  void attach(Print* out) { out_ = out; }
  void line(const char* text) {
    if (out_ != NULL) out_->println(text);
  }

 private:
  Print* out_;
};

/** EEPROM emulation (a RAM copy committed to a flash sector). */
class EepromStorage : public ByteStorage {
 public:
  explicit EepromStorage(size_t size) : size_(size) {}
  void begin();
  bool open() { return true; }  // begin() opened it for good
  void close() {}
  size_t size() { return size_; }
  uint8_t read(size_t address);
  void write(size_t address, uint8_t value);
  bool commit();

 private:
  size_t size_;
};

class Esp8266Http : public HttpClient {
 public:
  Esp8266Http();
  bool configure(const SMServerConfig& config);
  int get(const char* path, const char* bearer, char* body, size_t bodySize,
          long* retryAfterSeconds);

 private:
  String baseUrl_;
  bool https_;
  uint16_t timeoutMs_;
  WiFiClient plain_;
  BearSSL::WiFiClientSecure secure_;
  BearSSL::X509List trust_;
};

class PubSubMqtt : public MqttClient {
 public:
  PubSubMqtt();
  void configure(const SMServerConfig& config);
  void setListener(MqttListener* listener) { listener_ = listener; }
  bool connect(const char* host, uint16_t port, const char* clientId, const char* username,
               const char* password);
  bool connected();
  int state();
  bool subscribe(const char* topic);
  bool publish(const char* topic, const char* payload);
  void loop();
  void disconnect();

 private:
  WiFiClient plain_;
  BearSSL::WiFiClientSecure secure_;
  BearSSL::X509List trust_;
  PubSubClient client_;
  MqttListener* listener_;
  char host_[kHostSize];  // PubSubClient keeps the pointer, not a copy
};

}  // namespace smserver

/** The library's entry point for sketches: construct, begin(), loop(). */
class SMServer {
 public:
  explicit SMServer(const SMServerConfig& config);

  /** Master only, before begin(): also listen to this agent's master topic. */
  bool addAgent(const char* agentUuid);
  /** Call in setup(), after WiFi.begin(). False if the config is unusable. */
  bool begin();
  /** Call on every loop(); returns at once unless a network step is due. */
  void loop();

  bool connected() const { return client_.connected(); }
  smserver::Status status() const { return client_.status(); }
  const char* statusText() const { return smserver::statusName(client_.status()); }
  const char* uuid() const { return client_.uuid(); }

  bool publish(const char* topic, const char* payload) { return client_.publish(topic, payload); }
  bool publishData(const char* payload) { return client_.publishData(payload); }
  bool publishData(const JsonDocument& doc);
  bool publishToMaster(const char* payload) { return client_.publishToMaster(payload); }
  bool publishToMaster(const JsonDocument& doc);
  bool publishToAgent(const char* agentUuid, const char* payload) {
    return client_.publishToAgent(agentUuid, payload);
  }
  bool publishToAgent(const char* agentUuid, const JsonDocument& doc);

  /** Received messages waiting (oldest first); the queue keeps the newest. */
  size_t available() const { return client_.available(); }
  bool pop(smserver::Message& message) { return client_.pop(message); }
  uint32_t droppedMessages() const { return client_.droppedMessages(); }

  /** Forget the saved token (e.g. after moving the device to another server). */
  void forgetToken() { client_.forgetToken(); }
  smserver::DeviceClient& core() { return client_; }

 private:
  // Serializes into a payload-sized buffer; false if it does not fit.
  static bool serialize(const JsonDocument& doc, char* out, size_t outSize);

  SMServerConfig config_;
  smserver::ArduinoClock clock_;
  smserver::EepromStorage eeprom_;
  smserver::EepromKeyValueStore store_;
  smserver::SerialLog log_;
  smserver::Esp8266Http http_;
  smserver::PubSubMqtt mqtt_;
  smserver::DeviceClient client_;
  int8_t wifiState_;  // -1 unknown, 0 down, 1 up: log each change once
};

#endif  // ARDUINO && ESP8266
#endif  // SMSERVER_ARDUINO_H
