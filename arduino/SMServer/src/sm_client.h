/*
 * sm_client.h - the portable core: a millis()-driven state machine that
 * registers the device, finds the broker, keeps the MQTT session and its
 * presence pings alive, and queues received messages for the sketch.
 *
 *   [SetClock] -> RequestToken --200--> FetchBroker --200--> ConnectMqtt -> Subscribe -> Connected
 *   (CA trust)      ^  (401/429/400/5xx/network: wait, retry)    |                        |
 *                   +---- broker "not authorized" or /mqtt 403 ---+     lost: reconnect;  |
 *                                           FetchBroker <---- nothing heard for 25 s -----+
 *
 * loop() never sleeps: each step runs only when its due time has come, and
 * otherwise loop() returns at once. A call runs at most one network exchange
 * (an HTTP request or an MQTT connect), each bounded by the adapter's
 * timeouts; httpWorstCaseMs() and mqttConnectWorstCaseMs() below state the
 * bounds. Plain C++11; talks to the outside world only through
 * sm_interfaces.h.
 */
#ifndef SMSERVER_CLIENT_H
#define SMSERVER_CLIENT_H

#include "sm_interfaces.h"

// Buffer sizes; override with -D (build_flags) if your payloads are larger.
#ifndef SMSERVER_QUEUE_CAPACITY
#define SMSERVER_QUEUE_CAPACITY 4  // loop() delivers at most one message per call
#endif
#ifndef SMSERVER_MAX_PAYLOAD
#define SMSERVER_MAX_PAYLOAD 256
#endif
#ifndef SMSERVER_MAX_AGENTS
#define SMSERVER_MAX_AGENTS 8
#endif
#ifndef SMSERVER_TOKEN_SIZE
#define SMSERVER_TOKEN_SIZE 640  // the registration answer is read into it: tokens up to ~600 bytes
#endif

namespace smserver {

const size_t kUuidLength = 36;
const size_t kTopicSize = 64;  // "device/" + uuid + "/master" is 50
const size_t kHostSize = 128;

// ------------------------------------------------------------------ timing
// What the ESP8266 adapters guarantee (sm_arduino.cpp), stated here so the
// README, the boot log and the host tests share one source.

/** BearSSL's handshake bound: WiFiClientSecureCtx resets it to 15 s before every handshake (core 3.1.2). */
const uint32_t kTlsHandshakeMaxMs = 15000;
/** Closing a socket waits this long for the peer's ACKs (WIFICLIENT_MAX_FLUSH_WAIT_MS). */
const uint32_t kSocketCloseMaxMs = 300;

/**
 * The longest one HTTP request can block: DNS and TCP connect share one
 * `timeoutMs`, sending the request and reading the answer share another, a
 * TLS handshake adds kTlsHandshakeMaxMs, closing adds kSocketCloseMaxMs (twice
 * with TLS: the close_notify, then the socket).
 */
uint32_t httpWorstCaseMs(uint32_t timeoutMs, bool tls);
/**
 * The longest one MQTT connect can block: DNS and TCP connect share
 * `timeoutMs`, the TLS handshake adds kTlsHandshakeMaxMs, the CONNACK wait is
 * PubSubClient's socket timeout (`timeoutMs` rounded up to seconds), and
 * closing after a missing CONNACK adds kSocketCloseMaxMs.
 * PubSubClient reads a packet byte by byte with that timeout per byte, so a
 * broker that sends its CONNACK a byte at a time could stretch this; a broker
 * that answers, or stays silent, cannot.
 */
uint32_t mqttConnectWorstCaseMs(uint32_t timeoutMs, bool tls);
/** The longest one DeviceClient::loop() call can block: the worse of the two. */
uint32_t loopWorstCaseMs(uint32_t httpTimeoutMs, bool httpTls, uint32_t mqttTimeoutMs, bool mqttTls);

enum DeviceKind { kMaster, kAgent };

/** What the client is doing or waiting for; see statusName(). */
enum Status {
  kIdle,            // begin() not called, or it failed
  kRequestingToken, // about to ask /auth/devices/request
  kNotRegistered,   // 401: waiting for an owner to claim (master) or link (agent)
  kForbidden,       // 403: wrong secret, wrong kind, or device disabled
  kRateLimited,     // 429: waiting for Retry-After
  kBackingOff,      // 400, 5xx, network or broker error: waiting to retry
  kFetchingBroker,  // about to ask /mqtt
  kConnecting,      // about to connect to the broker, or subscribing
  kConnected,       // MQTT session up
  kSettingClock     // waiting for NTP: CA trust checks certificate dates
};

const char* statusName(Status status);

struct Settings {
  Settings();
  const char* uuid;                // 8-4-4-4-12 hex, any case
  const char* registrationSecret;  // DEVICE_MASTER_SECRET_KEY or DEVICE_AGENT_SECRET_KEY
  DeviceKind kind;
  uint32_t pingIntervalMs;         // 10 s: under the server's 15 s silence window
  uint32_t silenceLimitMs;         // 25 s: nothing heard this long, new session via /mqtt (0: off)
  uint32_t clockTimeoutMs;         // 20 s: then log that NTP gave no time (CA trust only)
  uint32_t retryInitialMs;         // first wait after a failure
  uint32_t retryMaxMs;             // the doubling stops here
  uint32_t forbiddenRetryMs;       // wait after a 403 on registration
  uint32_t maxRetryAfterMs;        // cap on a server's Retry-After
  uint32_t stableConnectionMs;     // a session this old that heard something resets the backoff
  uint8_t jitterPercent;           // random extra wait, 0..jitter% of the wait
};

/** Capped exponential backoff: initial, 2x, 4x, ... up to max (plus jitter). */
class Backoff {
 public:
  Backoff();
  void configure(uint32_t initialMs, uint32_t maxMs, uint8_t jitterPercent, uint32_t seed);
  /** The wait to use now; the following one doubles, up to the cap. */
  uint32_t next();
  void reset();

 private:
  uint32_t random();
  uint32_t initial_, max_, current_, state_;
  uint8_t jitter_;
};

/** A received message, NUL-terminated (length excludes the NUL). */
struct Message {
  char topic[kTopicSize];
  char payload[SMSERVER_MAX_PAYLOAD + 1];
  size_t length;
};

/**
 * A fixed ring of messages. When full, push() drops the OLDEST message to
 * make room: for sensor/command traffic the latest state matters most.
 */
class MessageQueue {
 public:
  MessageQueue();
  /** False when the message was too large to keep (it is dropped). */
  bool push(const char* topic, const uint8_t* payload, size_t length);
  bool pop(Message& out);
  size_t size() const { return count_; }
  static size_t capacity() { return SMSERVER_QUEUE_CAPACITY; }
  /** Messages lost to a full queue or an oversize payload, since boot. */
  uint32_t dropped() const { return dropped_; }
  void clear() { head_ = count_ = 0; }

 private:
  Message items_[SMSERVER_QUEUE_CAPACITY];
  size_t head_, count_;
  uint32_t dropped_;
};

class DeviceClient : private MqttListener {
 public:
  /** `wallClock`: only when a TLS connection trusts a CA (the clock is set first). */
  DeviceClient(Clock& clock, HttpClient& http, MqttClient& mqtt,
               KeyValueStore& store, Log* log, WallClock* wallClock = NULL);

  /** Master only, before begin(): also listen on device/<agent>/master. */
  bool addAgent(const char* agentUuid);
  /** Validates the settings and starts; a stored token skips registration. */
  bool begin(const Settings& settings);
  /** Call from the sketch's loop(); returns at once when nothing is due. */
  void loop();

  Status status() const { return status_; }
  bool connected() const { return state_ == kStateConnected; }
  const char* uuid() const { return uuid_; }
  bool hasToken() const { return token_[0] != '\0'; }
  /** Milliseconds until the next attempt (0 when due or connected). */
  uint32_t waitRemainingMs();

  /** QoS 0 publish while connected; its echo is not queued back. */
  bool publish(const char* topic, const char* payload);
  /** device/<uuid>/data */
  bool publishData(const char* payload);
  /** Agent: device/<uuid>/master (the master hears it). */
  bool publishToMaster(const char* payload);
  /** Master: device/<agent>/master (the agent hears it). */
  bool publishToAgent(const char* agentUuid, const char* payload);

  size_t available() const { return queue_.size(); }
  bool pop(Message& out) { return queue_.pop(out); }
  uint32_t droppedMessages() const { return queue_.dropped(); }

  /** Drops the token, in RAM and in EEPROM; the next connection registers again. */
  void forgetToken();

  /** Builds device/<uuid>/<leaf> with a lowercase uuid; false if it does not fit. */
  static bool topicFor(const char* uuid, const char* leaf, char* out, size_t outSize);
  /** True for 8-4-4-4-12 hex in any case; writes the lowercase form to out[37]. */
  static bool normalizeUuid(const char* uuid, char* out);

 private:
  enum State {
    kStateIdle,
    kStateSetClock,
    kStateRequestToken,
    kStateFetchBroker,
    kStateConnectMqtt,
    kStateSubscribe,
    kStateConnected
  };

  void onMqttMessage(const char* topic, const uint8_t* payload, size_t length);

  void waitForClock(uint32_t now);
  void requestToken();
  void fetchBroker(uint32_t now);
  void connectMqtt(uint32_t now);
  void subscribe(uint32_t now);
  void serviceConnection(uint32_t now);
  void networkFailure(const char* what, int code, char* out, size_t outSize);
  void authRefused(uint32_t now, const char* what);
  void scheduleRetry(State next, Status why, uint32_t waitMs, const char* what);
  void moveTo(State next, Status status, uint32_t dueAt);
  uint32_t retryAfterWait(long retryAfterSeconds);
  bool subscribeAll();
  void sendPing(uint32_t now);
  bool parseBroker(const char* address);
  void saveToken();
  void rememberEcho(const char* topic, const char* payload, size_t length);
  bool consumeEcho(const char* topic, const uint8_t* payload, size_t length);
  void logf(const char* format, ...)
#if defined(__GNUC__)
      __attribute__((format(printf, 2, 3)))
#endif
      ;

  Clock& clock_;
  HttpClient& http_;
  MqttClient& mqtt_;
  KeyValueStore& store_;
  Log* log_;
  WallClock* wallClock_;
  Settings settings_;
  Backoff backoff_;
  MessageQueue queue_;

  State state_;
  Status status_;
  uint32_t dueAt_;
  char uuid_[kUuidLength + 1];
  char agents_[SMSERVER_MAX_AGENTS][kUuidLength + 1];
  size_t agentCount_;
  char token_[SMSERVER_TOKEN_SIZE];  // also receives the registration answer
  char body_[kHostSize + 64];        // the /mqtt answer
  char brokerHost_[kHostSize];       // the MQTT adapter may keep this pointer
  uint16_t brokerPort_;

  State clockNext_;          // where SetClock goes once the clock is set
  uint32_t clockWarnAt_;
  uint32_t clockWarnEveryMs_;
  bool tokenSaved_;          // token_ is what EEPROM holds: no write needed
  bool refreshUsed_;         // one immediate token refresh per successful session
  uint8_t connectFailures_;  // consecutive; refetch /mqtt after a few
  uint32_t connectedAt_;
  bool stable_;
  bool heard_;               // the broker delivered something to this session
  uint32_t lastPingAt_;
  uint32_t lastHeardAt_;     // any message the broker delivered to this session
  uint32_t lastServerAt_;    // a PING or PONG from the server
  bool serverSilenceLogged_;
  bool pongDue_;

  struct Echo {
    uint32_t hash;
    uint32_t at;
    bool used;
  };
  static const size_t kEchoSlots = 8;
  Echo echoes_[kEchoSlots];
  size_t nextEcho_;
};

}  // namespace smserver

#endif  // SMSERVER_CLIENT_H
