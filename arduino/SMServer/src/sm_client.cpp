/*
 * sm_client.cpp - the device state machine (see sm_client.h; the protocol
 * it speaks is described in the library's README.md, "The protocol").
 *
 * Timing uses unsigned differences (now - then), so it survives the 49-day
 * millis() wrap. Serial messages are formatted here so that every platform
 * prints the same lines; README.md explains each one.
 */
#include "sm_client.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "sm_http.h"
#include "sm_json.h"

namespace smserver {
namespace {

const char kTokenKey[] = "token";
const char kTokenUuidKey[] = "uuid";  // the token belongs to this uuid
const uint8_t kConnectFailuresBeforeRefetch = 3;
const uint32_t kEchoWindowMs = 10000;
const uint32_t kClockWarnMaxMs = 600000;

uint32_t fnv1a(uint32_t hash, const uint8_t* data, size_t length) {
  for (size_t i = 0; i < length; ++i) {
    hash ^= data[i];
    hash *= 16777619u;
  }
  return hash;
}

uint32_t messageHash(const char* topic, const uint8_t* payload, size_t length) {
  uint32_t hash = fnv1a(2166136261u, reinterpret_cast<const uint8_t*>(topic), strlen(topic) + 1);
  hash = fnv1a(hash, payload, length);
  return hash == 0 ? 1 : hash;  // 0 marks a free slot
}

bool due(uint32_t now, uint32_t at) { return static_cast<int32_t>(now - at) >= 0; }

unsigned long seconds(uint32_t ms) { return static_cast<unsigned long>((ms + 999) / 1000); }

}  // namespace

uint32_t httpWorstCaseMs(uint32_t timeoutMs, bool tls) {
  return 2 * timeoutMs + kSocketCloseMaxMs + (tls ? kTlsHandshakeMaxMs + kSocketCloseMaxMs : 0);
}

uint32_t mqttConnectWorstCaseMs(uint32_t timeoutMs, bool tls) {
  uint32_t connackMs = (timeoutMs + 999) / 1000 * 1000;  // PubSubClient counts whole seconds
  return timeoutMs + connackMs + kSocketCloseMaxMs + (tls ? kTlsHandshakeMaxMs : 0);
}

uint32_t loopWorstCaseMs(uint32_t httpTimeoutMs, bool httpTls, uint32_t mqttTimeoutMs, bool mqttTls) {
  uint32_t http = httpWorstCaseMs(httpTimeoutMs, httpTls);
  uint32_t mqtt = mqttConnectWorstCaseMs(mqttTimeoutMs, mqttTls);
  return http > mqtt ? http : mqtt;
}

const char* statusName(Status status) {
  switch (status) {
    case kIdle: return "idle";
    case kRequestingToken: return "requesting token";
    case kNotRegistered: return "not registered";
    case kForbidden: return "forbidden";
    case kRateLimited: return "rate limited";
    case kBackingOff: return "backing off";
    case kFetchingBroker: return "fetching broker";
    case kConnecting: return "connecting";
    case kConnected: return "connected";
    case kSettingClock: return "setting clock";
  }
  return "?";
}

Settings::Settings()
    : uuid(NULL),
      registrationSecret(NULL),
      kind(kMaster),
      pingIntervalMs(10000),
      silenceLimitMs(25000),
      clockTimeoutMs(20000),
      retryInitialMs(5000),
      retryMaxMs(120000),
      forbiddenRetryMs(3600000),
      maxRetryAfterMs(3600000),
      stableConnectionMs(30000),
      jitterPercent(10) {}

// ---------------------------------------------------------------- Backoff

Backoff::Backoff() : initial_(5000), max_(120000), current_(5000), state_(1), jitter_(0) {}

void Backoff::configure(uint32_t initialMs, uint32_t maxMs, uint8_t jitterPercent, uint32_t seed) {
  initial_ = initialMs == 0 ? 1 : initialMs;
  max_ = maxMs < initial_ ? initial_ : maxMs;
  jitter_ = jitterPercent > 100 ? 100 : jitterPercent;
  state_ = seed == 0 ? 1 : seed;
  current_ = initial_;
}

uint32_t Backoff::random() {  // xorshift32: enough to spread a fleet's retries
  state_ ^= state_ << 13;
  state_ ^= state_ >> 17;
  state_ ^= state_ << 5;
  return state_;
}

uint32_t Backoff::next() {
  uint32_t wait = current_;
  current_ = (current_ > max_ / 2) ? max_ : current_ * 2;
  if (jitter_ > 0) {
    uint32_t spread = static_cast<uint32_t>((static_cast<uint64_t>(wait) * jitter_) / 100);
    wait += random() % (spread + 1);
  }
  return wait;
}

void Backoff::reset() { current_ = initial_; }

// ----------------------------------------------------------- MessageQueue

MessageQueue::MessageQueue() : head_(0), count_(0), dropped_(0) {}

bool MessageQueue::push(const char* topic, const uint8_t* payload, size_t length) {
  if (length > SMSERVER_MAX_PAYLOAD || strlen(topic) >= kTopicSize) {
    ++dropped_;
    return false;
  }
  if (count_ == SMSERVER_QUEUE_CAPACITY) {  // full: the oldest goes
    head_ = (head_ + 1) % SMSERVER_QUEUE_CAPACITY;
    --count_;
    ++dropped_;
  }
  Message& m = items_[(head_ + count_) % SMSERVER_QUEUE_CAPACITY];
  strcpy(m.topic, topic);
  if (length > 0) memcpy(m.payload, payload, length);
  m.payload[length] = '\0';
  m.length = length;
  ++count_;
  return true;
}

bool MessageQueue::pop(Message& out) {
  if (count_ == 0) return false;
  out = items_[head_];
  head_ = (head_ + 1) % SMSERVER_QUEUE_CAPACITY;
  --count_;
  return true;
}

// ----------------------------------------------------------- DeviceClient

DeviceClient::DeviceClient(Clock& clock, HttpClient& http, MqttClient& mqtt,
                           KeyValueStore& store, Log* log, WallClock* wallClock)
    : clock_(clock),
      http_(http),
      mqtt_(mqtt),
      store_(store),
      log_(log),
      wallClock_(wallClock),
      state_(kStateIdle),
      status_(kIdle),
      dueAt_(0),
      agentCount_(0),
      brokerPort_(0),
      clockNext_(kStateIdle),
      clockWarnAt_(0),
      clockWarnEveryMs_(0),
      tokenSaved_(false),
      refreshUsed_(false),
      connectFailures_(0),
      connectedAt_(0),
      stable_(false),
      heard_(false),
      lastPingAt_(0),
      lastHeardAt_(0),
      lastServerAt_(0),
      serverSilenceLogged_(false),
      pongDue_(false),
      nextEcho_(0) {
  uuid_[0] = token_[0] = body_[0] = brokerHost_[0] = '\0';
  memset(echoes_, 0, sizeof(echoes_));
}

bool DeviceClient::normalizeUuid(const char* uuid, char* out) {
  if (uuid == NULL || strlen(uuid) != kUuidLength) return false;
  for (size_t i = 0; i < kUuidLength; ++i) {
    char c = uuid[i];
    bool hyphen = (i == 8 || i == 13 || i == 18 || i == 23);
    if (hyphen) {
      if (c != '-') return false;
    } else if (c >= 'A' && c <= 'F') {
      c = static_cast<char>(c - 'A' + 'a');
    } else if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'))) {
      return false;
    }
    out[i] = c;
  }
  out[kUuidLength] = '\0';
  return true;
}

bool DeviceClient::topicFor(const char* uuid, const char* leaf, char* out, size_t outSize) {
  char lower[kUuidLength + 1];
  if (!normalizeUuid(uuid, lower)) return false;
  int n = snprintf(out, outSize, SM_PSTR("device/%s/%s"), lower, leaf);
  return n > 0 && static_cast<size_t>(n) < outSize;
}

bool DeviceClient::addAgent(const char* agentUuid) {
  if (agentCount_ >= SMSERVER_MAX_AGENTS) return false;
  if (!normalizeUuid(agentUuid, agents_[agentCount_])) return false;
  ++agentCount_;
  return true;
}

bool DeviceClient::begin(const Settings& settings) {
  settings_ = settings;
  if (!normalizeUuid(settings.uuid, uuid_)) {
    logf(SM_PSTR("invalid uuid '%s': expected 8-4-4-4-12 hex"), settings.uuid ? settings.uuid : SM_PSTR(""));
    return false;
  }
  if (settings.registrationSecret == NULL || settings.registrationSecret[0] == '\0') {
    logf(SM_PSTR("no registration secret configured"));
    return false;
  }
  uint32_t now = clock_.millis();
  uint32_t seed = fnv1a(2166136261u, reinterpret_cast<const uint8_t*>(uuid_), kUuidLength) ^ now;
  backoff_.configure(settings.retryInitialMs, settings.retryMaxMs, settings.jitterPercent, seed);
  mqtt_.setListener(this);

  logf(SM_PSTR("device %s (%s)"), uuid_, settings.kind == kAgent ? SM_PSTR("agent") : SM_PSTR("master"));
  // A token is only reused by the uuid it was issued to.
  char owner[kUuidLength + 1];
  State first;
  if (store_.get(kTokenUuidKey, owner, sizeof(owner)) && strcmp(owner, uuid_) == 0 &&
      store_.get(kTokenKey, token_, sizeof(token_)) && token_[0] != '\0') {
    tokenSaved_ = true;
    logf(SM_PSTR("using the stored token"));
    first = kStateFetchBroker;
  } else {
    token_[0] = '\0';
    tokenSaved_ = false;
    logf(SM_PSTR("no stored token, registering"));
    first = kStateRequestToken;
  }
  if (wallClock_ != NULL && !wallClock_->isSet()) {
    // CA trust checks certificate dates: without the date every certificate
    // looks "not yet valid", so no TLS connection is tried before the clock is set.
    clockNext_ = first;
    clockWarnEveryMs_ = 0;  // the wait is timed from the first loop() with WiFi up
    wallClock_->start();
    logf(SM_PSTR("setting the clock (NTP) before the first TLS connection"));
    moveTo(kStateSetClock, kSettingClock, now);
  } else {
    moveTo(first, first == kStateFetchBroker ? kFetchingBroker : kRequestingToken, now);
  }
  return true;
}

void DeviceClient::moveTo(State next, Status status, uint32_t dueAt) {
  state_ = next;
  status_ = status;
  dueAt_ = dueAt;
}

uint32_t DeviceClient::waitRemainingMs() {
  if (state_ == kStateIdle || state_ == kStateConnected || state_ == kStateSetClock) return 0;
  uint32_t now = clock_.millis();
  return due(now, dueAt_) ? 0 : dueAt_ - now;
}

void DeviceClient::loop() {
  if (state_ == kStateIdle) return;
  uint32_t now = clock_.millis();
  if (state_ == kStateConnected) {
    serviceConnection(now);
    return;
  }
  if (state_ == kStateSetClock) {
    waitForClock(now);
    return;
  }
  if (!due(now, dueAt_)) return;
  // One step per call: each runs at most one network exchange.
  switch (state_) {
    case kStateRequestToken: requestToken(); break;
    case kStateFetchBroker: fetchBroker(now); break;
    case kStateConnectMqtt: connectMqtt(now); break;
    case kStateSubscribe: subscribe(now); break;
    default: break;
  }
}

void DeviceClient::waitForClock(uint32_t now) {
  if (wallClock_->isSet()) {
    logf(SM_PSTR("clock set (NTP)"));
    moveTo(clockNext_, clockNext_ == kStateFetchBroker ? kFetchingBroker : kRequestingToken, now);
    return;
  }
  if (clockWarnEveryMs_ == 0) {
    clockWarnEveryMs_ = settings_.clockTimeoutMs == 0 ? 1 : settings_.clockTimeoutMs;
    clockWarnAt_ = now + clockWarnEveryMs_;
  } else if (due(now, clockWarnAt_)) {
    logf(SM_PSTR("clock not set: no NTP answer yet, and a CA certificate cannot be checked without "
         "the date (is UDP port 123 open?); still waiting"));
    clockWarnEveryMs_ = clockWarnEveryMs_ > kClockWarnMaxMs / 2 ? kClockWarnMaxMs : clockWarnEveryMs_ * 2;
    clockWarnAt_ = now + clockWarnEveryMs_;
  }
}

void DeviceClient::scheduleRetry(State next, Status why, uint32_t waitMs, const char* what) {
  logf(SM_PSTR("%s, retry in %lu s"), what, seconds(waitMs));
  moveTo(next, why, clock_.millis() + waitMs);
}

uint32_t DeviceClient::retryAfterWait(long retryAfterSeconds) {
  if (retryAfterSeconds < 0) return backoff_.next();  // no usable header
  uint32_t ms = (static_cast<unsigned long>(retryAfterSeconds) > settings_.maxRetryAfterMs / 1000)
                    ? settings_.maxRetryAfterMs
                    : static_cast<uint32_t>(retryAfterSeconds) * 1000;
  return ms < 1000 ? 1000 : ms;
}

void DeviceClient::saveToken() {
  // Called once a session has worked with the token. putAll() commits (one
  // flash sector erase) only when the bytes differ from what is stored.
  if (tokenSaved_) return;
  KeyValue pairs[] = {{kTokenUuidKey, uuid_}, {kTokenKey, token_}};
  if (store_.putAll(pairs, 2)) {
    tokenSaved_ = true;
  } else {
    logf(SM_PSTR("could not save the token to EEPROM (kept in RAM)"));
  }
}

void DeviceClient::forgetToken() {
  token_[0] = '\0';
  tokenSaved_ = false;
  store_.remove(kTokenKey);
}

void DeviceClient::networkFailure(const char* what, int code, char* out, size_t outSize) {
  if (code < 0) {
    snprintf(out, outSize, SM_PSTR("%s: %s (%d)"), what, httpErrorName(code), code);
  } else {
    snprintf(out, outSize, SM_PSTR("%s: HTTP %d"), what, code);
  }
}

void DeviceClient::requestToken() {
  char path[80];
  snprintf(path, sizeof(path), SM_PSTR("/auth/devices/request?uuid=%s"), uuid_);
  long retryAfter = -1;
  // The answer is read straight into token_ and the token extracted in
  // place, which spares a second token-sized buffer.
  tokenSaved_ = false;
  token_[0] = '\0';
  int code = http_.get(path, settings_.registrationSecret, token_, sizeof(token_), &retryAfter);
  char c[16];
  bool ok = code == 200 && jsonGetString(token_, "c", c, sizeof(c)) && strcmp(c, "OK") == 0 &&
            jsonGetString(token_, "t", token_, sizeof(token_)) && token_[0] != '\0';
  if (!ok) token_[0] = '\0';
  char what[80];
  switch (code) {
    case 200:
      if (ok) {
        logf(SM_PSTR("token received"));  // saved once a session works with it
        moveTo(kStateFetchBroker, kFetchingBroker, clock_.millis());
      } else {
        scheduleRetry(kStateRequestToken, kBackingOff, backoff_.next(),
                      SM_PSTR("token request: unreadable 200 answer"));
      }
      return;
    case 401:
      scheduleRetry(kStateRequestToken, kNotRegistered, backoff_.next(),
                    SM_PSTR("token request: NOT_REGISTERED (claim or link the device)"));
      return;
    case 403:
      scheduleRetry(kStateRequestToken, kForbidden, settings_.forbiddenRetryMs,
                    SM_PSTR("token request: FORBIDDEN (wrong secret or kind, or device disabled)"));
      return;
    case 429:
      scheduleRetry(kStateRequestToken, kRateLimited, retryAfterWait(retryAfter),
                    SM_PSTR("token request: RATE_LIMITED"));
      return;
    case 400:
      scheduleRetry(kStateRequestToken, kBackingOff, backoff_.next(),
                    SM_PSTR("token request: BAD_REQUEST"));
      return;
    default:
      networkFailure(SM_PSTR("token request"), code, what, sizeof(what));
      scheduleRetry(kStateRequestToken, kBackingOff, backoff_.next(), what);
      return;
  }
}

bool DeviceClient::parseBroker(const char* address) {
  // "host:port", "host" (port 1883) or "[v6]:port".
  const char* host = address;
  size_t hostLength;
  const char* rest;
  if (address[0] == '[') {
    const char* close = strchr(address, ']');
    if (close == NULL) return false;
    host = address + 1;
    hostLength = static_cast<size_t>(close - host);
    rest = close + 1;
  } else {
    const char* colon = strrchr(address, ':');
    hostLength = colon ? static_cast<size_t>(colon - address) : strlen(address);
    rest = address + hostLength;
  }
  if (hostLength == 0 || hostLength >= sizeof(brokerHost_)) return false;
  unsigned long port = 1883;
  if (*rest == ':') {
    port = 0;
    const char* p = rest + 1;
    if (*p == '\0') return false;
    for (; *p; ++p) {
      if (*p < '0' || *p > '9') return false;
      port = port * 10 + static_cast<unsigned long>(*p - '0');
      if (port > 65535) return false;
    }
  } else if (*rest != '\0') {
    return false;
  }
  if (port == 0) return false;
  memcpy(brokerHost_, host, hostLength);
  brokerHost_[hostLength] = '\0';
  brokerPort_ = static_cast<uint16_t>(port);
  return true;
}

void DeviceClient::fetchBroker(uint32_t now) {
  if (token_[0] == '\0') {  // nothing to show /mqtt: register first
    moveTo(kStateRequestToken, kRequestingToken, now);
    return;
  }
  long retryAfter = -1;
  body_[0] = '\0';
  int code = http_.get("/mqtt", token_, body_, sizeof(body_), &retryAfter);
  char what[80];
  if (code == 200) {
    char c[16];
    char ip[kHostSize + 8];
    if (jsonGetString(body_, "c", c, sizeof(c)) && strcmp(c, "OK") == 0 &&
        jsonGetString(body_, "ip", ip, sizeof(ip)) && parseBroker(ip)) {
      logf(SM_PSTR("broker %s:%u"), brokerHost_, static_cast<unsigned>(brokerPort_));
      connectFailures_ = 0;
      moveTo(kStateConnectMqtt, kConnecting, clock_.millis());
    } else {
      scheduleRetry(kStateFetchBroker, kBackingOff, backoff_.next(), SM_PSTR("/mqtt: unreadable 200 answer"));
    }
  } else if (code == 403 || code == 401) {
    authRefused(now, SM_PSTR("/mqtt: FORBIDDEN (token refused)"));
  } else if (code == 429) {
    scheduleRetry(kStateFetchBroker, kRateLimited, retryAfterWait(retryAfter), SM_PSTR("/mqtt: RATE_LIMITED"));
  } else {
    networkFailure(SM_PSTR("/mqtt"), code, what, sizeof(what));
    scheduleRetry(kStateFetchBroker, kBackingOff, backoff_.next(), what);
  }
}

void DeviceClient::authRefused(uint32_t now, const char* what) {
  // The token is dead (revoked, expired, device re-registered): drop it from
  // RAM only. EEPROM keeps its bytes until a new token has worked, so a
  // broker that keeps refusing never costs a flash erase; after a reboot the
  // stale copy costs one refused /mqtt call.
  token_[0] = '\0';
  tokenSaved_ = false;
  if (!refreshUsed_) {
    refreshUsed_ = true;
    logf(SM_PSTR("%s, requesting a new token"), what);
    moveTo(kStateRequestToken, kRequestingToken, now);
  } else {
    // A fresh token was refused too: something else is wrong, so wait
    // before registering again rather than hammering the server.
    scheduleRetry(kStateRequestToken, kBackingOff, backoff_.next(), what);
  }
}

bool DeviceClient::subscribeAll() {
  char topic[kTopicSize];
  topicFor(uuid_, "ping", topic, sizeof(topic));
  if (!mqtt_.subscribe(topic)) return false;
  topicFor(uuid_, "data", topic, sizeof(topic));
  if (!mqtt_.subscribe(topic)) return false;
  if (settings_.kind == kAgent) {
    topicFor(uuid_, "master", topic, sizeof(topic));
    if (!mqtt_.subscribe(topic)) return false;
  } else {
    for (size_t i = 0; i < agentCount_; ++i) {
      topicFor(agents_[i], "master", topic, sizeof(topic));
      if (!mqtt_.subscribe(topic)) return false;
    }
  }
  return true;
}

void DeviceClient::connectMqtt(uint32_t now) {
  if (token_[0] == '\0') {
    moveTo(kStateRequestToken, kRequestingToken, now);
    return;
  }
  logf(SM_PSTR("MQTT connecting to %s:%u"), brokerHost_, static_cast<unsigned>(brokerPort_));
  pongDue_ = false;
  char username[kUuidLength + 8];
  snprintf(username, sizeof(username), SM_PSTR("device_%s"), uuid_);
  if (mqtt_.connect(brokerHost_, brokerPort_, uuid_, username, token_)) {
    moveTo(kStateSubscribe, kConnecting, clock_.millis());  // next loop() call
    return;
  }
  int state = mqtt_.state();
  char what[64];
  if (state == kMqttBadCredentials || state == kMqttUnauthorized) {
    snprintf(what, sizeof(what), SM_PSTR("MQTT refused: not authorized (%d)"), state);
    authRefused(now, what);
    return;
  }
  ++connectFailures_;
  snprintf(what, sizeof(what), SM_PSTR("MQTT connect failed (state %d)"), state);
  // The broker may have moved: ask /mqtt again after a few failures.
  State next = connectFailures_ >= kConnectFailuresBeforeRefetch ? kStateFetchBroker : kStateConnectMqtt;
  if (next == kStateFetchBroker) connectFailures_ = 0;
  scheduleRetry(next, kBackingOff, backoff_.next(), what);
}

void DeviceClient::subscribe(uint32_t now) {
  if (!mqtt_.connected() || !subscribeAll()) {
    mqtt_.disconnect();
    ++connectFailures_;
    scheduleRetry(kStateConnectMqtt, kBackingOff, backoff_.next(), SM_PSTR("MQTT subscribe failed"));
    return;
  }
  refreshUsed_ = false;
  connectFailures_ = 0;
  connectedAt_ = lastHeardAt_ = lastServerAt_ = now;
  stable_ = heard_ = false;
  serverSilenceLogged_ = false;
  moveTo(kStateConnected, kConnected, now);
  logf(SM_PSTR("MQTT connected"));
  saveToken();    // the broker took it: now it is worth a flash write
  sendPing(now);  // announce presence at once, not a ping interval later
}

void DeviceClient::sendPing(uint32_t now) {
  char topic[kTopicSize];
  topicFor(uuid_, "ping", topic, sizeof(topic));
  lastPingAt_ = now;
  mqtt_.publish(topic, "{\"c\":\"PING\"}");
}

void DeviceClient::serviceConnection(uint32_t now) {
  mqtt_.loop();
  now = clock_.millis();  // a message handled by loop() may be newer than `now`
  if (!mqtt_.connected()) {
    int state = mqtt_.state();
    if (stable_) {
      backoff_.reset();
      logf(SM_PSTR("MQTT connection lost (state %d), reconnecting"), state);
      moveTo(kStateConnectMqtt, kConnecting, now);
    } else {
      // A session that dies young (flapping) backs off like a failed connect.
      char what[64];
      snprintf(what, sizeof(what), SM_PSTR("MQTT connection lost (state %d)"), state);
      scheduleRetry(kStateConnectMqtt, kBackingOff, backoff_.next(), what);
    }
    return;
  }
  if (!stable_ && now - connectedAt_ >= settings_.stableConnectionMs && heard_) {
    stable_ = true;  // lived long enough, and the broker delivered to it
    backoff_.reset();
  }
  uint32_t silence = settings_.silenceLimitMs;
  if (silence > 0 && now - lastHeardAt_ >= silence) {
    // TCP and MQTT keepalive can look healthy while the broker refuses every
    // topic of the session (a revoke on go-auth and amqtt): our PINGs are
    // dropped, so neither their echo nor a PONG comes back. Only a new login
    // through /mqtt recovers (a revoked token gets 403, then a fresh one).
    char what[96];
    snprintf(what, sizeof(what), SM_PSTR("MQTT: nothing heard for %lu s (revoked, or topics refused)"),
             seconds(now - lastHeardAt_));
    mqtt_.disconnect();
    if (stable_) backoff_.reset();
    scheduleRetry(kStateFetchBroker, kBackingOff, backoff_.next(), what);
    return;
  }
  if (silence > 0 && !serverSilenceLogged_ && now - lastServerAt_ >= silence) {
    // The broker still delivers (our own PING comes back), so a new session
    // would not help; say so once rather than make the fleet reconnect.
    serverSilenceLogged_ = true;
    logf(SM_PSTR("no PONG from the server for %lu s (is its pinger running?); staying connected"),
         seconds(now - lastServerAt_));
  }
  char topic[kTopicSize];
  if (pongDue_) {  // deferred: PubSubClient reuses its buffer inside the callback
    pongDue_ = false;
    topicFor(uuid_, "ping", topic, sizeof(topic));
    mqtt_.publish(topic, "{\"c\":\"PONG\"}");
  }
  if (now - lastPingAt_ >= settings_.pingIntervalMs) sendPing(now);
}

void DeviceClient::onMqttMessage(const char* topic, const uint8_t* payload, size_t length) {
  // Anything the broker delivers, our own echoes included, proves that it
  // still serves this session's topics.
  lastHeardAt_ = clock_.millis();
  heard_ = true;
  char pingTopic[kTopicSize];
  topicFor(uuid_, "ping", pingTopic, sizeof(pingTopic));
  if (strcmp(topic, pingTopic) == 0) {
    // Server messages carry "src":"server"; anything else on our ping topic
    // is our own PING/PONG coming back (MQTT 3.1.1 has no "no local").
    char src[16];
    char c[16];
    const char* text = reinterpret_cast<const char*>(payload);
    if (!jsonGetString(text, length, "src", src, sizeof(src)) || strcmp(src, "server") != 0) return;
    if (!jsonGetString(text, length, "c", c, sizeof(c))) return;
    lastServerAt_ = lastHeardAt_;
    serverSilenceLogged_ = false;
    if (strcmp(c, "PING") == 0) {
      pongDue_ = true;
      logf(SM_PSTR("server PING, answering PONG"));
    }
    return;  // a server PONG needs no action: the session is alive
  }
  if (consumeEcho(topic, payload, length)) return;
  bool wasFull = queue_.size() == MessageQueue::capacity();
  if (!queue_.push(topic, payload, length)) {
    logf(SM_PSTR("message on %s too large (%lu bytes), dropped"), topic, static_cast<unsigned long>(length));
  } else if (wasFull) {
    logf(SM_PSTR("queue full, dropped the oldest message"));
  }
}

void DeviceClient::rememberEcho(const char* topic, const char* payload, size_t length) {
  Echo& e = echoes_[nextEcho_];
  nextEcho_ = (nextEcho_ + 1) % kEchoSlots;
  e.hash = messageHash(topic, reinterpret_cast<const uint8_t*>(payload), length);
  e.at = clock_.millis();
  e.used = false;
}

bool DeviceClient::consumeEcho(const char* topic, const uint8_t* payload, size_t length) {
  uint32_t hash = messageHash(topic, payload, length);
  uint32_t now = clock_.millis();
  for (size_t i = 0; i < kEchoSlots; ++i) {
    Echo& e = echoes_[i];
    if (e.hash == hash && !e.used && now - e.at <= kEchoWindowMs) {
      e.used = true;  // one publish, one echo: a later identical peer message is kept
      return true;
    }
  }
  return false;
}

bool DeviceClient::publish(const char* topic, const char* payload) {
  if (state_ != kStateConnected || topic == NULL || payload == NULL) return false;
  size_t length = strlen(payload);
  rememberEcho(topic, payload, length);
  return mqtt_.publish(topic, payload);
}

bool DeviceClient::publishData(const char* payload) {
  char topic[kTopicSize];
  return topicFor(uuid_, "data", topic, sizeof(topic)) && publish(topic, payload);
}

bool DeviceClient::publishToMaster(const char* payload) {
  char topic[kTopicSize];
  return settings_.kind == kAgent && topicFor(uuid_, "master", topic, sizeof(topic)) &&
         publish(topic, payload);
}

bool DeviceClient::publishToAgent(const char* agentUuid, const char* payload) {
  char topic[kTopicSize];
  return settings_.kind == kMaster && topicFor(agentUuid, "master", topic, sizeof(topic)) &&
         publish(topic, payload);
}

void DeviceClient::logf(const char* format, ...) {
  if (log_ == NULL) return;
  char text[160] = "[SMServer] ";
  size_t prefix = strlen(text);
  va_list args;
  va_start(args, format);
  vsnprintf(text + prefix, sizeof(text) - prefix, format, args);
  va_end(args);
  log_->line(text);
}

}  // namespace smserver
