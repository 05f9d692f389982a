/*
 * sm_arduino.cpp - ESP8266 adapters and the SMServer facade (sm_arduino.h).
 * Empty outside ESP8266 Arduino builds, so the IDE can compile src/ whole.
 *
 * Facts about ESP8266 Arduino core 3.1.2 this file relies on (read from its
 * sources):
 * - Stream::setTimeout() is not virtual and BearSSL::WiFiClientSecure does not
 *   pass it on to its inner WiFiClientSecureCtx, so a timeout set on the
 *   wrapper never reaches the TCP connect or the TLS writes. We use
 *   WiFiClientSecureCtx directly, whose own timeout bounds both.
 * - WiFiClientSecureCtx resets its timeout to 15 s before every handshake
 *   (_connectSSL -> _freeSSL): the handshake bound is fixed (kTlsHandshakeMaxMs).
 * - Its connect(name) resolves the name with the 10 s default. We resolve
 *   first with our own bound; lwIP's DNS cache answers the second lookup.
 * - Creating a WiFiClientSecureCtx allocates BearSSL's 6.2 KB second stack
 *   when no other TLS client exists, and aborts the sketch if that fails.
 *
 * In the core's host emulator (CORE_MOCK) three things differ: it has no
 * SNTP (its clock is the host's), its EEPROM.end() leaves a stale size and
 * file descriptor behind, and its heap figures are constants.
 */
#include "sm_arduino.h"

#if defined(ARDUINO) && defined(ESP8266)

#include <EEPROM.h>
#include <StackThunk.h>
#include <stdarg.h>
#include <string.h>
#include <time.h>

#include <new>

#if !defined(CORE_MOCK)
#include <sntp.h>
#endif

SMServerConfig::SMServerConfig()
    : serverUrl(NULL),
      httpsCaCert(NULL),
      httpsPublicKey(NULL),
      httpsFingerprint(NULL),
      httpsInsecure(SMSERVER_HTTPS_INSECURE != 0),
      mqttTls(false),
      mqttCaCert(NULL),
      mqttPublicKey(NULL),
      mqttFingerprint(NULL),
      mqttInsecure(false),
      tlsFragment(SMSERVER_TLS_FRAGMENT),
      ntpServer1("pool.ntp.org"),
      ntpServer2("time.nist.gov"),
      httpTimeoutMs(5000),
      mqttTimeoutS(5),
      mqttKeepAliveS(SMSERVER_MQTT_KEEPALIVE),
      eepromOffset(SMSERVER_EEPROM_OFFSET),
      eepromSize(SMSERVER_EEPROM_SIZE),
      log(&Serial) {}

namespace smserver {
namespace {

// 2024-01-01T00:00:00Z: an earlier clock has not been set by NTP.
const time_t kPlausibleUnixTime = 1704067200;
// BearSSL's record overheads (WiFiClientSecureCtx::setBufferSizes).
const size_t kTlsInOverhead = 325;
const size_t kTlsOutOverhead = 85;
const size_t kTlsOutBuffer = 512;
const size_t kTlsFullRecord = 16384;
const size_t kBearSslStack = 6200;  // StackThunk.cpp: _stackSize * 4
const size_t kHeapMargin = 1024;    // for lwIP and the rest of the sketch
const size_t kRequestHeadSize = 256;  // on the stack during a request

// A setting is "set" when non-empty; PROGMEM strings must be read with pgm_read_byte.
bool isSet(const char* text) { return text != NULL && pgm_read_byte(text) != 0; }

uint32_t remainingMs(uint32_t started, uint32_t budget) {
  uint32_t spent = millis() - started;
  return spent >= budget ? 0 : budget - spent;
}

bool writeAll(WiFiClient& client, const char* text, size_t length) {
  return client.write(reinterpret_cast<const uint8_t*>(text), length) == length;
}

}  // namespace

void SerialLog::format(const char* format, ...) {
  if (out_ == NULL) return;
  char text[160] = "[SMServer] ";
  size_t prefix = strlen(text);
  va_list args;
  va_start(args, format);
  vsnprintf(text + prefix, sizeof(text) - prefix, format, args);
  va_end(args);
  out_->println(text);
}

// ------------------------------------------------------------ EEPROM

bool EepromStorage::open() {
  size_t length = EEPROM.length();
  if (length == 0) {
    // Nobody else uses EEPROM: hold its RAM copy only while we work.
    EEPROM.begin(size_);
    owned_ = EEPROM.length() >= size_;
    if (!owned_) {
      EEPROM.end();
      if (!warned_) log_.format(PSTR("EEPROM: no room for the token store (over 4096 bytes?)"));
      warned_ = true;
    }
    return owned_;
  }
  if (length < size_) {
    // The sketch opened EEPROM smaller than we need. Re-opening it would
    // drop the sketch's uncommitted bytes, so keep the token in RAM instead.
    if (!warned_) {
      log_.format(PSTR("EEPROM: the sketch opened %u bytes, the token store needs %u; token kept in RAM"),
                  static_cast<unsigned>(length), static_cast<unsigned>(size_));
      warned_ = true;
    }
    return false;
  }
  owned_ = false;
  return true;
}

void EepromStorage::close() {
#if !defined(CORE_MOCK)
  if (owned_) EEPROM.end();  // frees the RAM copy (the store has committed already)
#endif
  owned_ = false;
}

uint8_t EepromStorage::read(size_t address) { return EEPROM.read(static_cast<int>(address)); }
void EepromStorage::write(size_t address, uint8_t value) {
  EEPROM.write(static_cast<int>(address), value);
}
bool EepromStorage::commit() { return EEPROM.commit(); }

// --------------------------------------------------------------- NTP

void NtpClock::configure(bool needed, const char* server1, const char* server2) {
  needed_ = needed;
  server1_ = server1;
  server2_ = server2;
}

void NtpClock::start() {
  if (!needed_ || isSet()) return;
#if !defined(CORE_MOCK)
  // A sketch that set up SNTP itself (with its own time zone) keeps it.
  if (sntp_enabled()) return;
#endif
  configTime(0, 0, server1_, server2_);
}

bool NtpClock::isSet() { return !needed_ || time(NULL) >= kPlausibleUnixTime; }

// --------------------------------------------------------------- TLS

TlsTrust::TlsTrust()
    : mode_(kTrustPlain),
      pem_(NULL),
      anchors_(NULL),
      key_(NULL),
      owner_(true),
      fragment_(0),
      mflnRefused_(false),
      mflnLogged_(false) {
  memset(fingerprint_, 0, sizeof(fingerprint_));
}

TlsTrust::~TlsTrust() {
  if (owner_) {
    delete anchors_;
    delete key_;
  }
}

bool TlsTrust::configure(TrustMode mode, const char* pem, const char* fingerprint, uint16_t fragment,
                         const TlsTrust* shareWith, SerialLog& log, const char* what) {
  mode_ = mode;
  pem_ = pem;
  fragment_ = (fragment == 512 || fragment == 1024 || fragment == 2048 || fragment == 4096) ? fragment : 0;
  if (fragment != 0 && fragment_ == 0) {
    log.format(PSTR("tlsFragment %u: not 512, 1024, 2048 or 4096; using 16 KB buffers"), static_cast<unsigned>(fragment));
  }
  if ((mode == kTrustCa || mode == kTrustPublicKey) && shareWith != NULL && shareWith->mode_ == mode &&
      shareWith->pem_ == pem) {
    anchors_ = shareWith->anchors_;  // the same PEM for HTTPS and MQTT: parse it once
    key_ = shareWith->key_;
    owner_ = false;
    return true;
  }
  bool ok = true;
  if (mode == kTrustCa) {
    anchors_ = new (std::nothrow) BearSSL::X509List();
    ok = anchors_ != NULL && anchors_->append(pem) && anchors_->getCount() > 0;
  } else if (mode == kTrustPublicKey) {
    key_ = new (std::nothrow) BearSSL::PublicKey();
    ok = key_ != NULL && key_->parse(pem) && (key_->isRSA() || key_->isEC());
  } else if (mode == kTrustFingerprint) {
    char copy[64];  // the setting may be PROGMEM
    strncpy_P(copy, fingerprint, sizeof(copy) - 1);
    copy[sizeof(copy) - 1] = '\0';
    ok = parseFingerprint(copy, fingerprint_);
  }
  if (!ok) {
    log.format(PSTR("%s: BearSSL cannot read it (%s expected)"), what,
               mode == kTrustFingerprint ? PSTR("20 hex bytes, e.g. AB:CD:...") : PSTR("PEM text"));
  }
  return ok;
}

BearSSL::WiFiClientSecureCtx* TlsTrust::newClient(SerialLog& log) {
  size_t in = (reduced() ? fragment_ : kTlsFullRecord) + kTlsInOverhead;
  size_t out = kTlsOutBuffer + kTlsOutOverhead;
  size_t stack = stack_thunk_get_refcnt() == 0 ? kBearSslStack : 0;
  size_t need = stack + in + out + sizeof(br_ssl_client_context) + sizeof(br_x509_minimal_context);
  uint32_t free = ESP.getFreeHeap();
  uint32_t block = ESP.getMaxFreeBlockSize();
  // The core aborts the sketch when it cannot allocate the BearSSL stack:
  // check first and fail the connection instead.
#if defined(CORE_MOCK)
  free = block = 0xFFFFFFFFu;  // the emulator's heap is the host's
#endif
  if (free < need + kHeapMargin || block < (stack > in ? stack : in)) {
    log.format(PSTR("TLS: %u bytes of heap free (largest block %u), about %u needed"), static_cast<unsigned>(free),
               static_cast<unsigned>(block), static_cast<unsigned>(need));
    return NULL;
  }
  BearSSL::WiFiClientSecureCtx* client = new (std::nothrow) BearSSL::WiFiClientSecureCtx();
  if (client == NULL) return NULL;
  client->setBufferSizes(static_cast<int>(in - kTlsInOverhead), static_cast<int>(kTlsOutBuffer));
  switch (mode_) {
    case kTrustCa: client->setTrustAnchors(anchors_); break;
    case kTrustPublicKey: client->setKnownKey(key_); break;
    case kTrustFingerprint:
      if (!client->setFingerprint(fingerprint_)) {  // cannot fail for 20 bytes; checked anyway
        log.format(PSTR("TLS: setFingerprint refused the fingerprint"));
        delete client;
        return NULL;
      }
      break;
    case kTrustInsecure: client->setInsecure(); break;
    default: break;  // plain, missing, ambiguous: begin() never lets these through
  }
  return client;
}

void TlsTrust::connected(BearSSL::WiFiClientSecureCtx& client, const char* host, SerialLog& log) {
  if (!reduced() || mflnLogged_) return;
  mflnLogged_ = true;
  if (client.getMFLNStatus()) {
    log.format(PSTR("TLS with %s: %u-byte records (MFLN)"), host, static_cast<unsigned>(fragment_));
  } else {
    // It fit this time, but the server may send full 16 KB records later.
    mflnRefused_ = true;
    log.format(PSTR("TLS with %s: no MFLN; the next connection uses 16 KB buffers"), host);
  }
}

int TlsTrust::connectFailed(BearSSL::WiFiClientSecureCtx& client, const char* host, uint16_t port, SerialLog& log) {
  char reason[72];
  int error = client.getLastSSLError(reason, sizeof(reason));
  if (error == 0) return kHttpErrorConnect;  // TCP never connected: no TLS to blame
  log.format(PSTR("TLS with %s:%u failed: %s (BearSSL %d)"), host, static_cast<unsigned>(port), reason, error);
  // A server that ignores MFLN sends records larger than the reduced buffer.
  bool tooLarge = (error & ~(BR_ERR_RECV_FATAL_ALERT | BR_ERR_SEND_FATAL_ALERT)) == BR_ERR_TOO_LARGE;
  if (reduced() && (tooLarge || (error & BR_ERR_RECV_FATAL_ALERT) != 0)) {
    mflnRefused_ = true;
    log.format(PSTR("TLS with %s: the next attempt goes without MFLN (16 KB buffers)"), host);
  }
  return kHttpErrorTls;
}

// -------------------------------------------------------------- HTTP

bool Esp8266Http::configure(const SMServerConfig& config, TrustMode mode, SerialLog& log) {
  url_ = config.serverUrl;
  timeoutMs_ = config.httpTimeoutMs == 0 ? 1 : config.httpTimeoutMs;
  log_ = &log;
  ServerUrl url;
  char head[kRequestHeadSize];
  char longestPath[72];  // the registration path with a 36-character uuid
  snprintf(longestPath, sizeof(longestPath), PSTR("/auth/devices/request?uuid=%036d"), 0);
  if (!parseServerUrl(url_, url) || formatRequestHead(url, longestPath, head, sizeof(head)) == 0) {
    log.format(PSTR("serverUrl too long: its host and path must fit a %u-byte request head"),
               static_cast<unsigned>(sizeof(head)));
    return false;
  }
  const char* pem = mode == kTrustCa ? config.httpsCaCert : config.httpsPublicKey;
  return trust_.configure(mode, pem, config.httpsFingerprint, config.tlsFragment, NULL, log,
                          mode == kTrustCa ? "httpsCaCert"
                          : mode == kTrustPublicKey ? "httpsPublicKey"
                                                    : "httpsFingerprint");
}

int Esp8266Http::get(const char* path, const char* bearer, char* body, size_t bodySize,
                     long* retryAfterSeconds) {
  *retryAfterSeconds = -1;
  if (bodySize > 0) body[0] = '\0';
  ServerUrl url;
  char head[kRequestHeadSize];
  size_t headLength;
  if (!parseServerUrl(url_, url) || (headLength = formatRequestHead(url, path, head, sizeof(head))) == 0) {
    return kHttpErrorProtocol;  // begin() checked the URL; an oversized path lands here
  }

  // Reaching the server: DNS and TCP connect share one timeout.
  uint32_t started = millis();
  IPAddress address;
  if (!WiFi.hostByName(url.host, address, timeoutMs_)) return kHttpErrorDns;
  uint32_t left = remainingMs(started, timeoutMs_);
  if (left == 0) return kHttpErrorConnect;

  if (!url.tls) {
    WiFiClient client;
    client.setTimeout(left);
    if (!client.connect(address, url.port)) return kHttpErrorConnect;
    return exchange(client, head, headLength, bearer, body, bodySize, retryAfterSeconds);
  }
  BearSSL::WiFiClientSecureCtx* client = trust_.newClient(*log_);
  if (client == NULL) return kHttpErrorMemory;
  client->setTimeout(left);  // the TCP connect; the handshake has the core's own 15 s
  int result;
  if (client->connect(url.host, url.port)) {  // by name: SNI and the certificate's name check
    trust_.connected(*client, url.host, *log_);
    result = exchange(*client, head, headLength, bearer, body, bodySize, retryAfterSeconds);
  } else {
    result = trust_.connectFailed(*client, url.host, url.port, *log_);
    client->setTimeout(kSocketCloseMaxMs);
    client->stop();
  }
  delete client;  // frees the TLS buffers, and the BearSSL stack if MQTT holds no TLS client
  return result;
}

int Esp8266Http::exchange(WiFiClient& client, const char* head, size_t headLength, const char* bearer,
                          char* body, size_t bodySize, long* retryAfterSeconds) {
  // Sending the request and reading the answer share one timeout.
  uint32_t started = millis();
  client.setNoDelay(true);
  client.setTimeout(timeoutMs_);
  int result = kHttpErrorTimeout;
  if (writeAll(client, head, headLength) && writeAll(client, bearer, strlen(bearer)) &&
      writeAll(client, kRequestEnd, strlen(kRequestEnd))) {
    HttpResponseParser parser(body, bodySize);
    char chunk[128];
    while (!parser.done()) {
      uint32_t left = remainingMs(started, timeoutMs_);
      if (left == 0) break;
      int available = client.available();
      if (available > 0) {
        size_t want = static_cast<size_t>(available) < sizeof(chunk) ? static_cast<size_t>(available) : sizeof(chunk);
        int n = client.read(reinterpret_cast<uint8_t*>(chunk), want);
        if (n > 0) parser.feed(chunk, static_cast<size_t>(n));
      } else if (!client.connected()) {
        parser.closed();
      } else {
        // Wait for the next byte, at most what is left (the core yields meanwhile).
        client.setTimeout(left);
        char one;
        if (client.readBytes(&one, 1) == 1) parser.feed(&one, 1);
      }
    }
    if (parser.done()) {
      result = parser.failed() ? kHttpErrorProtocol : parser.status();
      *retryAfterSeconds = parser.retryAfterSeconds();
    }
  }
  client.setTimeout(kSocketCloseMaxMs);
  client.stop();
  return result;
}

// -------------------------------------------------------------- MQTT

PubSubMqtt::PubSubMqtt()
    : secure_(NULL), listener_(NULL), log_(NULL), timeoutMs_(5000), failState_(0) {}

PubSubMqtt::~PubSubMqtt() { release(); }

bool PubSubMqtt::configure(const SMServerConfig& config, TrustMode mode, const TlsTrust* shareWith,
                           SerialLog& log) {
  log_ = &log;
  uint16_t seconds = config.mqttTimeoutS == 0 ? 1 : config.mqttTimeoutS;
  timeoutMs_ = static_cast<uint32_t>(seconds) * 1000;
  client_.setClient(plain_);
  client_.setKeepAlive(config.mqttKeepAliveS);
  client_.setSocketTimeout(seconds);
  client_.setCallback([this](char* topic, uint8_t* payload, unsigned int length) {
    if (listener_ != NULL) listener_->onMqttMessage(topic, payload, length);
  });
  const char* pem = mode == kTrustCa ? config.mqttCaCert : config.mqttPublicKey;
  return trust_.configure(mode, pem, config.mqttFingerprint, config.tlsFragment, shareWith, log,
                          mode == kTrustCa ? "mqttCaCert"
                          : mode == kTrustPublicKey ? "mqttPublicKey"
                                                    : "mqttFingerprint");
}

void PubSubMqtt::release() {
  client_.setClient(plain_);
  delete secure_;
  secure_ = NULL;
}

bool PubSubMqtt::failed(int state) {
  failState_ = state;
  release();
  return false;
}

bool PubSubMqtt::connect(const char* host, uint16_t port, const char* clientId,
                         const char* username, const char* password) {
  failState_ = 0;
  release();
  // The CONNECT packet carries the token as its password and must fit the
  // buffer whole, as must every message we receive; size it for both.
  size_t connectPacket = 5 + 10 + 2 + strlen(clientId) + 2 + strlen(username) + 2 + strlen(password);
  size_t message = 5 + 2 + kTopicSize + 2 + SMSERVER_MAX_PAYLOAD;
  size_t need = connectPacket > message ? connectPacket : message;
#ifdef SMSERVER_MQTT_BUFFER
  if (need < SMSERVER_MQTT_BUFFER) need = SMSERVER_MQTT_BUFFER;
#endif
  if (need > 0xFFFF || (client_.getBufferSize() != need && !client_.setBufferSize(static_cast<uint16_t>(need)))) {
    log_->format(PSTR("MQTT: no memory for the packet buffer"));
    return failed(kMqttConnectFailed);
  }

  // Reaching the broker: DNS and TCP connect share one timeout.
  uint32_t started = millis();
  IPAddress address;
  if (!WiFi.hostByName(host, address, timeoutMs_)) {
    log_->format(PSTR("MQTT: no DNS answer for %s"), host);
    return failed(kMqttConnectFailed);
  }
  uint32_t left = remainingMs(started, timeoutMs_);
  if (left == 0) return failed(kMqttConnectFailed);
  if (trust_.mode() == kTrustPlain) {
    plain_.setTimeout(left);
    client_.setServer(address, port);
  } else {
    secure_ = trust_.newClient(*log_);
    if (secure_ == NULL) return failed(kMqttConnectFailed);
    secure_->setTimeout(left);         // the TCP connect; the handshake has its own 15 s
    client_.setClient(*secure_);
    client_.setServer(host, port);     // by name: SNI and the certificate's name check
  }
  if (!client_.connect(clientId, username, password)) {
    if (secure_ != NULL && client_.state() == kMqttConnectFailed) {
      trust_.connectFailed(*secure_, host, port, *log_);
    }
    int state = client_.state();
    return failed(state);
  }
  if (secure_ != NULL) {
    trust_.connected(*secure_, host, *log_);
    secure_->setTimeout(timeoutMs_);  // later writes: the core left 5 s
  } else {
    plain_.setTimeout(timeoutMs_);
  }
  return true;
}

bool PubSubMqtt::connected() {
  bool up = client_.connected();
  if (!up && secure_ != NULL) release();  // the session is over: free its TLS memory now
  return up;
}

int PubSubMqtt::state() { return failState_ != 0 ? failState_ : client_.state(); }
bool PubSubMqtt::subscribe(const char* topic) { return client_.subscribe(topic, 1); }
bool PubSubMqtt::publish(const char* topic, const char* payload) {
  return client_.publish(topic, payload);
}
void PubSubMqtt::loop() { client_.loop(); }

void PubSubMqtt::disconnect() {
  if (secure_ != NULL) {
    secure_->setTimeout(kSocketCloseMaxMs);
  } else {
    plain_.setTimeout(kSocketCloseMaxMs);
  }
  client_.disconnect();
  release();
}

}  // namespace smserver

// ---------------------------------------------------------- SMServer

SMServer::SMServer(const SMServerConfig& config)
    : config_(config),
      eeprom_(config.eepromOffset + config.eepromSize, log_),
      store_(eeprom_, config.eepromOffset, config.eepromSize),
      client_(clock_, http_, mqtt_, store_, &log_, &ntp_),
      worstCaseLoopMs_(0),
      wifiState_(-1) {}

bool SMServer::addAgent(const char* agentUuid) { return client_.addAgent(agentUuid); }

bool SMServer::begin() {
  using smserver::TrustMode;
  log_.attach(config_.log);
  smserver::ServerUrl url;
  if (!smserver::parseServerUrl(config_.serverUrl, url)) {
    log_.format(PSTR("serverUrl must be http://host[:port][/path] or https://..."));
    return false;
  }
  smserver::TrustSettings https = {smserver::isSet(config_.httpsCaCert), smserver::isSet(config_.httpsPublicKey),
                                   smserver::isSet(config_.httpsFingerprint), config_.httpsInsecure};
  smserver::TrustSettings mqtts = {smserver::isSet(config_.mqttCaCert), smserver::isSet(config_.mqttPublicKey),
                                   smserver::isSet(config_.mqttFingerprint), config_.mqttInsecure};
  TrustMode httpMode = smserver::selectTrust(url.tls, https);
  TrustMode mqttMode = smserver::selectTrust(config_.mqttTls, mqtts);
  const char* const names[2] = {"https", "MQTT"};
  const TrustMode modes[2] = {httpMode, mqttMode};
  for (int i = 0; i < 2; ++i) {
    if (modes[i] == smserver::kTrustMissing) {
      log_.format(PSTR("%s: set one of %sCaCert (recommended), %sPublicKey or %sFingerprint"), names[i],
                  i ? "mqtt" : "https", i ? "mqtt" : "https", i ? "mqtt" : "https");
      return false;
    }
    if (modes[i] == smserver::kTrustAmbiguous) {
      log_.format(PSTR("%s: set only one of the CA certificate, public key and fingerprint"), names[i]);
      return false;
    }
    if (modes[i] != smserver::kTrustPlain) {
      log_.format(PSTR("%s trust: %s%s"), names[i], smserver::trustModeName(modes[i]),
                  modes[i] == smserver::kTrustFingerprint ? PSTR(" (breaks at every certificate renewal)")
                  : modes[i] == smserver::kTrustInsecure  ? PSTR(", testing only")
                                                          : PSTR(""));
    }
  }
  if (!http_.configure(config_, httpMode, log_) ||
      !mqtt_.configure(config_, mqttMode, &http_.trust(), log_)) {
    return false;
  }
  ntp_.configure(smserver::trustNeedsClock(httpMode) || smserver::trustNeedsClock(mqttMode),
                 config_.ntpServer1, config_.ntpServer2);
  uint32_t mqttTimeoutMs = static_cast<uint32_t>(config_.mqttTimeoutS == 0 ? 1 : config_.mqttTimeoutS) * 1000;
  worstCaseLoopMs_ = smserver::loopWorstCaseMs(config_.httpTimeoutMs, url.tls, mqttTimeoutMs, config_.mqttTls);
  log_.format(PSTR("one loop() call blocks at most %lu.%lu s (one HTTP request or one MQTT connect)"),
              static_cast<unsigned long>(worstCaseLoopMs_ / 1000),
              static_cast<unsigned long>(worstCaseLoopMs_ % 1000 / 100));
  return client_.begin(config_);
}

void SMServer::loop() {
  // Without WiFi every request would fail and grow the backoff for nothing.
  bool up = WiFi.status() == WL_CONNECTED;
  if (wifiState_ != (up ? 1 : 0)) {
    wifiState_ = up ? 1 : 0;
    if (up) {
      log_.format(PSTR("WiFi connected, IP %s"), WiFi.localIP().toString().c_str());
    } else {
      log_.format(PSTR("waiting for WiFi"));
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
