/*
 * sm_client.cpp - the device state machine (see sm_client.h and SPEC.md).
 *
 * Timing uses unsigned differences (now - then), so it survives the 49-day
 * millis() wrap. Serial messages are formatted here so that every platform
 * prints the same lines; README.md explains each one.
 */
#include "sm_client.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "sm_json.h"

namespace smserver {
namespace {

const char kTokenKey[] = "token";
const char kTokenUuidKey[] = "uuid";  // the token belongs to this uuid
const uint8_t kConnectFailuresBeforeRefetch = 3;
const uint32_t kEchoWindowMs = 10000;

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

}  // namespace

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
  }
  return "?";
}

Settings::Settings()
    : uuid(NULL),
      registrationSecret(NULL),
      kind(kMaster),
      pingIntervalMs(15000),
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
                           KeyValueStore& store, Log* log)
    : clock_(clock),
      http_(http),
      mqtt_(mqtt),
      store_(store),
      log_(log),
      state_(kStateIdle),
      status_(kIdle),
      dueAt_(0),
      agentCount_(0),
      brokerPort_(0),
      refreshUsed_(false),
      connectFailures_(0),
      connectedAt_(0),
      stable_(false),
      lastPingAt_(0),
      pongDue_(false),
      nextEcho_(0) {
  uuid_[0] = token_[0] = body_[0] = brokerHost_[0] = pingTopic_[0] = username_[0] = '\0';
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
  int n = snprintf(out, outSize, "device/%s/%s", lower, leaf);
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
    logf("invalid uuid '%s': expected 8-4-4-4-12 hex", settings.uuid ? settings.uuid : "");
    return false;
  }
  if (settings.registrationSecret == NULL || settings.registrationSecret[0] == '\0') {
    logf("no registration secret configured");
    return false;
  }
  topicFor(uuid_, "ping", pingTopic_, sizeof(pingTopic_));
  snprintf(username_, sizeof(username_), "device_%s", uuid_);

  uint32_t now = clock_.millis();
  uint32_t seed = fnv1a(2166136261u, reinterpret_cast<const uint8_t*>(uuid_), kUuidLength) ^ now;
  backoff_.configure(settings.retryInitialMs, settings.retryMaxMs, settings.jitterPercent, seed);
  mqtt_.setListener(this);

  logf("device %s (%s)", uuid_, settings.kind == kAgent ? "agent" : "master");
  // A token is only reused by the uuid it was issued to.
  char owner[kUuidLength + 1];
  if (store_.get(kTokenUuidKey, owner, sizeof(owner)) && strcmp(owner, uuid_) == 0 &&
      store_.get(kTokenKey, token_, sizeof(token_)) && token_[0] != '\0') {
    logf("using the stored token");
    moveTo(kStateFetchBroker, kFetchingBroker, now);
  } else {
    token_[0] = '\0';
    logf("no stored token, registering");
    moveTo(kStateRequestToken, kRequestingToken, now);
  }
  return true;
}

void DeviceClient::moveTo(State next, Status status, uint32_t dueAt) {
  state_ = next;
  status_ = status;
  dueAt_ = dueAt;
}

uint32_t DeviceClient::waitRemainingMs() {
  if (state_ == kStateIdle || state_ == kStateConnected) return 0;
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
  if (!due(now, dueAt_)) return;
  switch (state_) {
    case kStateRequestToken: requestToken(); break;
    case kStateFetchBroker: fetchBroker(now); break;
    case kStateConnectMqtt: connectMqtt(now); break;
    default: break;
  }
}

void DeviceClient::scheduleRetry(State next, Status why, uint32_t waitMs, const char* what) {
  logf("%s, retry in %lu s", what, static_cast<unsigned long>((waitMs + 999) / 1000));
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
  if (!store_.put(kTokenUuidKey, uuid_) || !store_.put(kTokenKey, token_)) {
    logf("could not save the token to EEPROM (kept in RAM)");
  }
}

void DeviceClient::forgetToken() {
  token_[0] = '\0';
  store_.remove(kTokenKey);
}

void DeviceClient::requestToken() {
  char path[80];
  snprintf(path, sizeof(path), "/auth/devices/request?uuid=%s", uuid_);
  long retryAfter = -1;
  body_[0] = '\0';
  int code = http_.get(path, settings_.registrationSecret, body_, sizeof(body_), &retryAfter);
  char what[64];
  switch (code) {
    case 200: {
      char c[16];
      if (jsonGetString(body_, "c", c, sizeof(c)) && strcmp(c, "OK") == 0 &&
          jsonGetString(body_, "t", token_, sizeof(token_)) && token_[0] != '\0') {
        saveToken();
        logf("token received");
        moveTo(kStateFetchBroker, kFetchingBroker, clock_.millis());
      } else {
        token_[0] = '\0';
        scheduleRetry(kStateRequestToken, kBackingOff, backoff_.next(),
                      "token request: unreadable 200 answer");
      }
      return;
    }
    case 401:
      scheduleRetry(kStateRequestToken, kNotRegistered, backoff_.next(),
                    "token request: NOT_REGISTERED (claim or link the device)");
      return;
    case 403:
      scheduleRetry(kStateRequestToken, kForbidden, settings_.forbiddenRetryMs,
                    "token request: FORBIDDEN (wrong secret or kind, or device disabled)");
      return;
    case 429:
      scheduleRetry(kStateRequestToken, kRateLimited, retryAfterWait(retryAfter),
                    "token request: RATE_LIMITED");
      return;
    case 400:
      scheduleRetry(kStateRequestToken, kBackingOff, backoff_.next(),
                    "token request: BAD_REQUEST");
      return;
    default:
      if (code < 0) {
        snprintf(what, sizeof(what), "token request: network error (%d)", code);
      } else {
        snprintf(what, sizeof(what), "token request: HTTP %d", code);
      }
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
  char what[64];
  if (code == 200) {
    char c[16];
    char ip[kHostSize + 8];
    if (jsonGetString(body_, "c", c, sizeof(c)) && strcmp(c, "OK") == 0 &&
        jsonGetString(body_, "ip", ip, sizeof(ip)) && parseBroker(ip)) {
      logf("broker %s:%u", brokerHost_, static_cast<unsigned>(brokerPort_));
      connectFailures_ = 0;
      moveTo(kStateConnectMqtt, kConnecting, clock_.millis());
    } else {
      scheduleRetry(kStateFetchBroker, kBackingOff, backoff_.next(), "/mqtt: unreadable 200 answer");
    }
  } else if (code == 403 || code == 401) {
    authRefused(now, "/mqtt: FORBIDDEN (token refused)");
  } else if (code == 429) {
    scheduleRetry(kStateFetchBroker, kRateLimited, retryAfterWait(retryAfter), "/mqtt: RATE_LIMITED");
  } else {
    if (code < 0) {
      snprintf(what, sizeof(what), "/mqtt: network error (%d)", code);
    } else {
      snprintf(what, sizeof(what), "/mqtt: HTTP %d", code);
    }
    scheduleRetry(kStateFetchBroker, kBackingOff, backoff_.next(), what);
  }
}

void DeviceClient::authRefused(uint32_t now, const char* what) {
  // The token is dead (revoked, expired, device re-registered): drop it.
  forgetToken();
  if (!refreshUsed_) {
    refreshUsed_ = true;
    logf("%s, requesting a new token", what);
    moveTo(kStateRequestToken, kRequestingToken, now);
  } else {
    // A fresh token was refused too: something else is wrong, so wait
    // before registering again rather than hammering the server.
    scheduleRetry(kStateRequestToken, kBackingOff, backoff_.next(), what);
  }
}

bool DeviceClient::subscribeAll() {
  char topic[kTopicSize];
  if (!mqtt_.subscribe(pingTopic_)) return false;
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
  logf("MQTT connecting to %s:%u", brokerHost_, static_cast<unsigned>(brokerPort_));
  pongDue_ = false;
  if (mqtt_.connect(brokerHost_, brokerPort_, uuid_, username_, token_)) {
    if (!subscribeAll()) {
      mqtt_.disconnect();
      ++connectFailures_;
      scheduleRetry(kStateConnectMqtt, kBackingOff, backoff_.next(), "MQTT subscribe failed");
      return;
    }
    now = clock_.millis();
    refreshUsed_ = false;
    connectFailures_ = 0;
    connectedAt_ = now;
    stable_ = false;
    moveTo(kStateConnected, kConnected, now);
    logf("MQTT connected");
    sendPing(now);  // announce presence at once, not 15 s later
    return;
  }
  int state = mqtt_.state();
  char what[64];
  if (state == kMqttBadCredentials || state == kMqttUnauthorized) {
    snprintf(what, sizeof(what), "MQTT refused: not authorized (%d)", state);
    authRefused(now, what);
    return;
  }
  ++connectFailures_;
  snprintf(what, sizeof(what), "MQTT connect failed (state %d)", state);
  // The broker may have moved: ask /mqtt again after a few failures.
  State next = connectFailures_ >= kConnectFailuresBeforeRefetch ? kStateFetchBroker : kStateConnectMqtt;
  if (next == kStateFetchBroker) connectFailures_ = 0;
  scheduleRetry(next, kBackingOff, backoff_.next(), what);
}

void DeviceClient::sendPing(uint32_t now) {
  lastPingAt_ = now;
  mqtt_.publish(pingTopic_, "{\"c\":\"PING\"}");
}

void DeviceClient::serviceConnection(uint32_t now) {
  mqtt_.loop();
  if (!mqtt_.connected()) {
    int state = mqtt_.state();
    if (stable_ || now - connectedAt_ >= settings_.stableConnectionMs) {
      backoff_.reset();
      logf("MQTT connection lost (state %d), reconnecting", state);
      moveTo(kStateConnectMqtt, kConnecting, now);
    } else {
      // A session that dies young (flapping) backs off like a failed connect.
      char what[64];
      snprintf(what, sizeof(what), "MQTT connection lost (state %d)", state);
      scheduleRetry(kStateConnectMqtt, kBackingOff, backoff_.next(), what);
    }
    return;
  }
  if (!stable_ && now - connectedAt_ >= settings_.stableConnectionMs) {
    stable_ = true;
    backoff_.reset();
  }
  if (pongDue_) {  // deferred: PubSubClient reuses its buffer inside the callback
    pongDue_ = false;
    mqtt_.publish(pingTopic_, "{\"c\":\"PONG\"}");
  }
  if (now - lastPingAt_ >= settings_.pingIntervalMs) sendPing(now);
}

void DeviceClient::onMqttMessage(const char* topic, const uint8_t* payload, size_t length) {
  if (strcmp(topic, pingTopic_) == 0) {
    // Server messages carry "src":"server"; anything else on our ping topic
    // is our own PING/PONG coming back (MQTT 3.1.1 has no "no local").
    char src[16];
    char c[16];
    const char* text = reinterpret_cast<const char*>(payload);
    if (!jsonGetString(text, length, "src", src, sizeof(src)) || strcmp(src, "server") != 0) return;
    if (!jsonGetString(text, length, "c", c, sizeof(c))) return;
    if (strcmp(c, "PING") == 0) {
      pongDue_ = true;
      logf("server PING, answering PONG");
    }
    return;  // a server PONG needs no action: the session is alive
  }
  if (consumeEcho(topic, payload, length)) return;
  bool wasFull = queue_.size() == MessageQueue::capacity();
  if (!queue_.push(topic, payload, length)) {
    logf("message on %s too large (%lu bytes), dropped", topic, static_cast<unsigned long>(length));
  } else if (wasFull) {
    logf("queue full, dropped the oldest message");
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
