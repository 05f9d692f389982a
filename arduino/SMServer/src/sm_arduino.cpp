/*
 * sm_arduino.cpp - ESP8266 adapters and the SMServer facade (sm_arduino.h).
 * Empty outside ESP8266 Arduino builds, so the IDE can compile src/ whole.
 */
#include "sm_arduino.h"

#if defined(ARDUINO) && defined(ESP8266)

#include <EEPROM.h>
#include <string.h>

SMServerConfig::SMServerConfig()
    : serverUrl(NULL),
      httpsFingerprint(NULL),
      httpsCaCert(NULL),
      httpsInsecure(SMSERVER_HTTPS_INSECURE != 0),
      mqttTls(false),
      mqttFingerprint(NULL),
      mqttCaCert(NULL),
      mqttInsecure(false),
      httpTimeoutMs(5000),
      mqttTimeoutS(5),
      eepromOffset(0),
      eepromSize(1024),
      log(&Serial) {}

namespace smserver {
namespace {

// Applies one TLS policy to a BearSSL client: pin, CA, or (explicitly) none.
void applyTls(BearSSL::WiFiClientSecure& client, BearSSL::X509List& trust, const char* fingerprint,
              const char* caCert, bool insecure) {
  if (fingerprint != NULL && fingerprint[0] != '\0') {
    client.setFingerprint(fingerprint);
  } else if (caCert != NULL && caCert[0] != '\0') {
    trust.append(caCert);
    client.setTrustAnchors(&trust);
  } else if (insecure) {
    client.setInsecure();
  }
  // Otherwise BearSSL refuses every certificate: a configuration error shows
  // up as a network error in the log instead of a silent downgrade.
}

}  // namespace

// ------------------------------------------------------------ EEPROM

void EepromStorage::begin() { EEPROM.begin(size_); }
uint8_t EepromStorage::read(size_t address) { return EEPROM.read(static_cast<int>(address)); }
void EepromStorage::write(size_t address, uint8_t value) {
  EEPROM.write(static_cast<int>(address), value);
}
bool EepromStorage::commit() { return EEPROM.commit(); }

// -------------------------------------------------------------- HTTP

Esp8266Http::Esp8266Http() : https_(false), timeoutMs_(5000) {}

bool Esp8266Http::configure(const SMServerConfig& config) {
  if (config.serverUrl == NULL) return false;
  baseUrl_ = config.serverUrl;
  while (baseUrl_.endsWith("/")) baseUrl_.remove(baseUrl_.length() - 1);
  https_ = baseUrl_.startsWith("https://");
  if (!https_ && !baseUrl_.startsWith("http://")) return false;
  timeoutMs_ = config.httpTimeoutMs;
  if (https_) {
    applyTls(secure_, trust_, config.httpsFingerprint, config.httpsCaCert, config.httpsInsecure);
  }
  return true;
}

int Esp8266Http::get(const char* path, const char* bearer, char* body, size_t bodySize,
                     long* retryAfterSeconds) {
  *retryAfterSeconds = -1;
  body[0] = '\0';
  HTTPClient http;
  http.setTimeout(timeoutMs_);
  WiFiClient& transport = https_ ? static_cast<WiFiClient&>(secure_) : plain_;
  if (!http.begin(transport, baseUrl_ + path)) return -1;  // as HTTPC_ERROR_CONNECTION_FAILED
  http.addHeader("Authorization", String("Bearer ") + bearer);
  const char* wanted[] = {"Retry-After"};
  http.collectHeaders(wanted, 1);
  int code = http.GET();
  if (code > 0) {
    // The answers are tiny; never buffer a large body (a captive portal page).
    int size = http.getSize();
    if (size < 0 || static_cast<size_t>(size) < bodySize) {
      String text = http.getString();
      strncpy(body, text.c_str(), bodySize - 1);
      body[bodySize - 1] = '\0';
    }
    String retryAfter = http.header("Retry-After");
    if (retryAfter.length() > 0) {
      long seconds = 0;
      bool digits = true;
      for (unsigned i = 0; i < retryAfter.length() && digits; ++i) {
        char c = retryAfter[i];
        digits = (c >= '0' && c <= '9');
        if (digits && seconds < 100000000L) seconds = seconds * 10 + (c - '0');
      }
      if (digits) *retryAfterSeconds = seconds;  // an HTTP-date form is ignored
    }
  }
  http.end();
  return code;
}

// -------------------------------------------------------------- MQTT

PubSubMqtt::PubSubMqtt() : listener_(NULL) { host_[0] = '\0'; }

void PubSubMqtt::configure(const SMServerConfig& config) {
  if (config.mqttTls) {
    applyTls(secure_, trust_, config.mqttFingerprint, config.mqttCaCert, config.mqttInsecure);
    client_.setClient(secure_);
  } else {
    client_.setClient(plain_);
  }
  client_.setBufferSize(SMSERVER_MQTT_BUFFER);
  client_.setSocketTimeout(config.mqttTimeoutS);
  client_.setCallback([this](char* topic, uint8_t* payload, unsigned int length) {
    if (listener_ != NULL) listener_->onMqttMessage(topic, payload, length);
  });
}

bool PubSubMqtt::connect(const char* host, uint16_t port, const char* clientId,
                         const char* username, const char* password) {
  strncpy(host_, host, sizeof(host_) - 1);
  host_[sizeof(host_) - 1] = '\0';
  client_.setServer(host_, port);
  return client_.connect(clientId, username, password);
}

bool PubSubMqtt::connected() { return client_.connected(); }
int PubSubMqtt::state() { return client_.state(); }
bool PubSubMqtt::subscribe(const char* topic) { return client_.subscribe(topic, 1); }
bool PubSubMqtt::publish(const char* topic, const char* payload) {
  return client_.publish(topic, payload);
}
void PubSubMqtt::loop() { client_.loop(); }
void PubSubMqtt::disconnect() { client_.disconnect(); }

}  // namespace smserver

// ---------------------------------------------------------- SMServer

SMServer::SMServer(const SMServerConfig& config)
    : config_(config),
      eeprom_(config.eepromOffset + config.eepromSize),
      store_(eeprom_, config.eepromOffset, config.eepromSize),
      client_(clock_, http_, mqtt_, store_, &log_),
      wifiState_(-1) {}

bool SMServer::addAgent(const char* agentUuid) { return client_.addAgent(agentUuid); }

bool SMServer::begin() {
  log_.attach(config_.log);
  if (!http_.configure(config_)) {
    log_.line("[SMServer] serverUrl must start with http:// or https://");
    return false;
  }
  mqtt_.configure(config_);
  eeprom_.begin();
  return client_.begin(config_);
}

void SMServer::loop() {
  // Without WiFi every request would fail and grow the backoff for nothing.
  bool up = WiFi.status() == WL_CONNECTED;
  if (wifiState_ != (up ? 1 : 0)) {
    wifiState_ = up ? 1 : 0;
    if (up) {
      String line = String("[SMServer] WiFi connected, IP ") + WiFi.localIP().toString();
      log_.line(line.c_str());
    } else {
      log_.line("[SMServer] waiting for WiFi");
    }
  }
  if (up) client_.loop();
}

bool SMServer::serialize(const JsonDocument& doc, char* out, size_t outSize) {
  size_t needed = measureJson(doc);
  if (needed + 1 > outSize) return false;
  serializeJson(doc, out, outSize);
  return true;
}

bool SMServer::publishData(const JsonDocument& doc) {
  char payload[SMSERVER_MAX_PAYLOAD + 1];
  return serialize(doc, payload, sizeof(payload)) && client_.publishData(payload);
}

bool SMServer::publishToMaster(const JsonDocument& doc) {
  char payload[SMSERVER_MAX_PAYLOAD + 1];
  return serialize(doc, payload, sizeof(payload)) && client_.publishToMaster(payload);
}

bool SMServer::publishToAgent(const char* agentUuid, const JsonDocument& doc) {
  char payload[SMSERVER_MAX_PAYLOAD + 1];
  return serialize(doc, payload, sizeof(payload)) && client_.publishToAgent(agentUuid, payload);
}

#endif  // ARDUINO && ESP8266
