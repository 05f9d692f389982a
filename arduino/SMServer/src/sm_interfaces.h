/*
 * sm_interfaces.h - the small abstract interfaces the portable core talks to.
 *
 * The state machine (sm_client.h) never includes an Arduino header: it reaches
 * time, HTTP, MQTT, storage and logging only through these classes. On the
 * ESP8266 they are implemented by sm_arduino.cpp (millis(), ESP8266HTTPClient,
 * PubSubClient, EEPROM, Serial, NTP); the host tests implement them with fakes.
 * Plain C++11, no exceptions, no heap allocation.
 */
#ifndef SMSERVER_INTERFACES_H
#define SMSERVER_INTERFACES_H

#include <stddef.h>
#include <stdint.h>

// The library version (library.properties), sent as the HTTP User-Agent.
#define SMSERVER_VERSION "1.1.0"

// A string literal that only printf-style functions read (log formats, and
// texts printed with %s). The ESP8266 keeps .rodata in RAM but its printf
// reads flash, so there such literals go to flash; elsewhere nothing changes.
// Never pass one to strcmp, strlen or Print.
#if defined(ARDUINO) && defined(ESP8266)
#include <pgmspace.h>
#define SM_PSTR(text) PSTR(text)
#else
#define SM_PSTR(text) (text)
#endif

namespace smserver {

/** Monotonic milliseconds, wrapping at 2^32 like Arduino's millis(). */
class Clock {
 public:
  virtual ~Clock() {}
  virtual uint32_t millis() = 0;
};

/** Why no HTTP status came back: HttpClient::get() returns one of these. */
enum HttpError {
  kHttpErrorDns = -1,       // the server's name did not resolve in time
  kHttpErrorConnect = -2,   // TCP connect refused or timed out
  kHttpErrorTls = -3,       // TLS handshake failed (trust, clock, buffer size)
  kHttpErrorTimeout = -4,   // connected, but no complete answer in time
  kHttpErrorProtocol = -5,  // the answer is not HTTP/1.x
  kHttpErrorMemory = -6     // not enough heap for the connection
};

/**
 * One blocking HTTP GET at a time. Each call opens a connection and closes it
 * before returning, so no TLS session outlives a request.
 */
class HttpClient {
 public:
  virtual ~HttpClient() {}
  /**
   * GET `path` (e.g. "/mqtt") with "Authorization: Bearer <bearer>".
   * Reads at most bodySize-1 bytes of body: a body that fits is copied into
   * `body`, NUL-terminated; a longer one is not read further and `body` is
   * left empty. Sets *retryAfterSeconds to the Retry-After header
   * (delta-seconds form), or to -1 when it is absent or unreadable.
   * Returns the HTTP status, or an HttpError.
   */
  virtual int get(const char* path, const char* bearer, char* body,
                  size_t bodySize, long* retryAfterSeconds) = 0;
};

/** Receives messages from MqttClient::loop(). */
class MqttListener {
 public:
  virtual ~MqttListener() {}
  /** `payload` is not NUL-terminated and is only valid during the call. */
  virtual void onMqttMessage(const char* topic, const uint8_t* payload,
                             size_t length) = 0;
};

/** PubSubClient's state() codes, which the core reads after a failed connect. */
enum MqttState {
  kMqttConnectionTimeout = -4,
  kMqttConnectionLost = -3,
  kMqttConnectFailed = -2,
  kMqttDisconnected = -1,
  kMqttConnected = 0,
  kMqttBadProtocol = 1,
  kMqttBadClientId = 2,
  kMqttUnavailable = 3,
  kMqttBadCredentials = 4,
  kMqttUnauthorized = 5
};

/** The subset of PubSubClient the core needs. */
class MqttClient {
 public:
  virtual ~MqttClient() {}
  virtual void setListener(MqttListener* listener) = 0;
  /**
   * Opens the session (clean session); false with state() telling why.
   * `host` stays valid until the next connect(): adapters may keep the pointer.
   */
  virtual bool connect(const char* host, uint16_t port, const char* clientId,
                       const char* username, const char* password) = 0;
  virtual bool connected() = 0;
  /** One of MqttState. */
  virtual int state() = 0;
  /** Subscribes with QoS 1. */
  virtual bool subscribe(const char* topic) = 0;
  /** Publishes with QoS 0, not retained. */
  virtual bool publish(const char* topic, const char* payload) = 0;
  /** Services the socket; delivers messages to the listener. */
  virtual void loop() = 0;
  virtual void disconnect() = 0;
};

/** One key and its value, for KeyValueStore::putAll(). */
struct KeyValue {
  const char* key;
  const char* value;
};

/**
 * String values by short string keys; survives reboots. Every write may cost
 * a flash sector erase, so implementations persist only bytes that changed.
 */
class KeyValueStore {
 public:
  virtual ~KeyValueStore() {}
  /** True and `out` filled when the key exists and fits in outSize-1 bytes. */
  virtual bool get(const char* key, char* out, size_t outSize) = 0;
  /** Writes every pair, then persists once, and only if a byte changed. */
  virtual bool putAll(const KeyValue* pairs, size_t count) = 0;
  bool put(const char* key, const char* value) {
    KeyValue pair = {key, value};
    return putAll(&pair, 1);
  }
  virtual bool remove(const char* key) = 0;
};

/**
 * A byte array that persists after commit(): the ESP8266 EEPROM emulation.
 * Reads and writes happen between open() and close(), so an adapter may keep
 * its RAM copy only while the store works.
 */
class ByteStorage {
 public:
  virtual ~ByteStorage() {}
  /** False when the storage cannot be used now (nothing is read or written). */
  virtual bool open() = 0;
  virtual void close() = 0;
  virtual size_t size() = 0;
  virtual uint8_t read(size_t address) = 0;
  virtual void write(size_t address, uint8_t value) = 0;
  /** Persists the written bytes (on the ESP8266: erases and rewrites a sector). */
  virtual bool commit() = 0;
};

/**
 * The calendar clock, which checking a certificate against a CA needs (NTP on
 * the device). Used only when some TLS connection trusts a CA.
 */
class WallClock {
 public:
  virtual ~WallClock() {}
  /** Starts setting the clock, without waiting; called once. */
  virtual void start() = 0;
  /** True once the clock holds a plausible date. */
  virtual bool isSet() = 0;
};

/** Where the core's one-line status messages go (Serial on the device). */
class Log {
 public:
  virtual ~Log() {}
  virtual void line(const char* text) = 0;
};

}  // namespace smserver

#endif  // SMSERVER_INTERFACES_H
