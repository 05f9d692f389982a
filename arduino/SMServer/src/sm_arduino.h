/*
 * sm_arduino.h - the ESP8266 side: thin adapters from the core's interfaces
 * to millis(), WiFiClient / BearSSL, PubSubClient, EEPROM, NTP and Serial,
 * and the SMServer class that sketches use. Compiled only for ESP8266 Arduino
 * builds; the host tests type-check it against stubs.
 */
#ifndef SMSERVER_ARDUINO_H
#define SMSERVER_ARDUINO_H

#if defined(ARDUINO) && defined(ESP8266)

#include <Arduino.h>
#include <ArduinoJson.h>
#include <ESP8266WiFi.h>
#include <PubSubClient.h>
#include <WiFiClientSecureBearSSL.h>

#include "sm_client.h"
#include "sm_http.h"
#include "sm_kvstore.h"
#include "sm_tls.h"

// Compile-time default for SMServerConfig::httpsInsecure (testing only).
#ifndef SMSERVER_HTTPS_INSECURE
#define SMSERVER_HTTPS_INSECURE 0
#endif
// Where the token store lives in the EEPROM sector: sketches usually keep
// their own data at the start, so the library stays clear of bytes 0-511.
#ifndef SMSERVER_EEPROM_OFFSET
#define SMSERVER_EEPROM_OFFSET 512
#endif
#ifndef SMSERVER_EEPROM_SIZE
#define SMSERVER_EEPROM_SIZE 768  // header, uuid and a token of up to 640 bytes
#endif
#ifndef SMSERVER_MQTT_KEEPALIVE
#define SMSERVER_MQTT_KEEPALIVE 15
#endif
// TLS record size asked of servers (RFC 6066 max_fragment_length): 512, 1024,
// 2048 or 4096 bytes; 0 keeps BearSSL's full 16 KB receive buffer.
#ifndef SMSERVER_TLS_FRAGMENT
#define SMSERVER_TLS_FRAGMENT 512
#endif

/**
 * Everything a sketch configures; the timing fields come from Settings.
 * Certificate and key strings may be PROGMEM; every string must stay valid
 * for the life of the SMServer object.
 */
struct SMServerConfig : public smserver::Settings {
  SMServerConfig();
  const char* serverUrl;  // "http://192.168.1.10:5000" or "https://iot.example.com"
  // How an https:// server is trusted: set ONE of the first three (README, "Trust").
  const char* httpsCaCert;       // PEM CA certificate, e.g. ISRG Root X1 (needs NTP)
  const char* httpsPublicKey;    // PEM public key of the server (key pinning)
  const char* httpsFingerprint;  // SHA-1 of the certificate: breaks at every renewal
  bool httpsInsecure;            // no check at all: testing only
  // MQTT over TLS: the address /mqtt hands out must be a TLS listener.
  bool mqttTls;
  const char* mqttCaCert;
  const char* mqttPublicKey;
  const char* mqttFingerprint;
  bool mqttInsecure;
  uint16_t tlsFragment;     // SMSERVER_TLS_FRAGMENT: 512, or 0 for full 16 KB buffers
  const char* ntpServer1;   // "pool.ntp.org": sets the clock for CA trust
  const char* ntpServer2;   // "time.nist.gov"
  uint16_t httpTimeoutMs;   // 5000: DNS+connect share it, request+answer share it again
  uint16_t mqttTimeoutS;    // 5: DNS+connect, and the CONNACK wait
  uint16_t mqttKeepAliveS;  // SMSERVER_MQTT_KEEPALIVE (15)
  size_t eepromOffset;      // SMSERVER_EEPROM_OFFSET (512)
  size_t eepromSize;        // SMSERVER_EEPROM_SIZE (768)
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
  /** "[SMServer] " + the formatted text. */
  void format(const char* format, ...) __attribute__((format(printf, 2, 3)));

 private:
  Print* out_;
};

/**
 * The EEPROM emulation. When the sketch has not opened EEPROM itself, the
 * RAM copy exists only while the token store reads or writes; when it has,
 * the library uses that copy (which must cover offset + size).
 */
class EepromStorage : public ByteStorage {
 public:
  EepromStorage(size_t size, SerialLog& log) : size_(size), log_(log), owned_(false), warned_(false) {}
  bool open();
  void close();
  size_t size() { return size_; }
  uint8_t read(size_t address);
  void write(size_t address, uint8_t value);
  bool commit();

 private:
  size_t size_;
  SerialLog& log_;
  bool owned_;
  bool warned_;
};

/** configTime() with the configured servers, once, unless the sketch set up SNTP. */
class NtpClock : public WallClock {
 public:
  NtpClock() : needed_(false), server1_(NULL), server2_(NULL) {}
  void configure(bool needed, const char* server1, const char* server2);
  void start();
  bool isSet();

 private:
  bool needed_;
  const char* server1_;
  const char* server2_;
};

/**
 * How one endpoint (the HTTPS API or the MQTT broker) is trusted, and the
 * BearSSL clients made for it: one per connection, created when it opens and
 * deleted when it closes, so neither the TLS buffers nor BearSSL's 6 KB
 * second stack stay allocated while no TLS connection is open.
 */
class TlsTrust {
 public:
  TlsTrust();
  ~TlsTrust();
  /** Parses the PEM or fingerprint for `mode`; false (and logged) when BearSSL refuses it. */
  bool configure(TrustMode mode, const char* pem, const char* fingerprint, uint16_t fragment,
                 const TlsTrust* shareWith, SerialLog& log, const char* what);
  TrustMode mode() const { return mode_; }
  /** A client set up with this trust and buffer sizes, or NULL (logged) when heap is short. */
  BearSSL::WiFiClientSecureCtx* newClient(SerialLog& log);
  /** After a successful connect: notes whether the server took MFLN. */
  void connected(BearSSL::WiFiClientSecureCtx& client, const char* host, SerialLog& log);
  /** After a failed connect: logs why; returns kHttpErrorConnect or kHttpErrorTls. */
  int connectFailed(BearSSL::WiFiClientSecureCtx& client, const char* host, uint16_t port, SerialLog& log);

 private:
  TlsTrust(const TlsTrust&);
  TlsTrust& operator=(const TlsTrust&);
  bool reduced() const { return fragment_ != 0 && !mflnRefused_; }

  TrustMode mode_;
  const char* pem_;
  BearSSL::X509List* anchors_;
  BearSSL::PublicKey* key_;
  bool owner_;  // false when anchors_/key_ are borrowed from another TlsTrust
  uint8_t fingerprint_[kFingerprintSize];
  uint16_t fragment_;
  bool mflnRefused_;
  bool mflnLogged_;
};

/** HTTP/1.1 GET with "Connection: close": one connection per request. */
class Esp8266Http : public HttpClient {
 public:
  Esp8266Http() : url_(NULL), timeoutMs_(5000), log_(NULL) {}
  bool configure(const SMServerConfig& config, TrustMode mode, SerialLog& log);
  int get(const char* path, const char* bearer, char* body, size_t bodySize,
          long* retryAfterSeconds);
  const TlsTrust& trust() const { return trust_; }

 private:
  int exchange(WiFiClient& client, const char* head, size_t headLength, const char* bearer,
               char* body, size_t bodySize, long* retryAfterSeconds);

  const char* url_;
  uint16_t timeoutMs_;
  SerialLog* log_;
  TlsTrust trust_;
};

class PubSubMqtt : public MqttClient {
 public:
  PubSubMqtt();
  ~PubSubMqtt();
  bool configure(const SMServerConfig& config, TrustMode mode, const TlsTrust* shareWith, SerialLog& log);
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
  void release();  // back to the idle plain client; deletes the TLS one
  bool failed(int state);

  WiFiClient plain_;
  BearSSL::WiFiClientSecureCtx* secure_;
  TlsTrust trust_;
  PubSubClient client_;
  MqttListener* listener_;
  SerialLog* log_;
  uint32_t timeoutMs_;
  int failState_;  // state() when connect() failed before PubSubClient ran
};

}  // namespace smserver

/** The library's entry point for sketches: construct, begin(), loop(). */
class SMServer {
 public:
  explicit SMServer(const SMServerConfig& config);

  /** Master only, before begin(): also listen to this agent's master topic. */
  bool addAgent(const char* agentUuid);
  /** Call in setup(), after WiFi.begin(). False (and logged) if the config is unusable. */
  bool begin();
  /** Call on every loop(); returns at once unless a network step is due. */
  void loop();

  bool connected() const { return client_.connected(); }
  smserver::Status status() const { return client_.status(); }
  const char* statusText() const { return smserver::statusName(client_.status()); }
  const char* uuid() const { return client_.uuid(); }
  /** The longest one loop() call can block with this configuration (logged by begin()). */
  uint32_t worstCaseLoopMs() const { return worstCaseLoopMs_; }

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
  smserver::SerialLog log_;
  smserver::EepromStorage eeprom_;
  smserver::EepromKeyValueStore store_;
  smserver::NtpClock ntp_;
  smserver::Esp8266Http http_;
  smserver::PubSubMqtt mqtt_;
  smserver::DeviceClient client_;
  uint32_t worstCaseLoopMs_;
  int8_t wifiState_;  // -1 unknown, 0 down, 1 up: log each change once
};

#endif  // ARDUINO && ESP8266
#endif  // SMSERVER_ARDUINO_H
