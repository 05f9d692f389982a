/*
 * fakes.h - in-memory stand-ins for millis(), the HTTP client, PubSubClient,
 * EEPROM, NTP and Serial, implementing the core's interfaces. They script
 * answers and record every call so tests can assert what the device did and
 * when. The fake broker echoes a device's publishes back to its own
 * subscriptions, as a real MQTT 3.1.1 broker does; it can also answer PINGs
 * as the server does, or refuse every topic as go-auth does after a revoke.
 * Blocking calls (an HTTP request, an MQTT connect) are counted in BlockingOps
 * and may "stall": advance the clock by their worst case.
 */
#ifndef SMSERVER_TEST_FAKES_H
#define SMSERVER_TEST_FAKES_H

#include <cstring>
#include <deque>
#include <string>
#include <utility>
#include <vector>

#include "sm_client.h"
#include "sm_interfaces.h"
#include "sm_kvstore.h"

class FakeClock : public smserver::Clock {
 public:
  explicit FakeClock(uint32_t start = 1000) : now(start) {}
  uint32_t millis() override { return now; }
  void advance(uint32_t ms) { now += ms; }
  uint32_t now;
};

/** Counts the network exchanges that may block, per DeviceClient::loop() call. */
struct BlockingOps {
  int inThisLoop = 0;
  int mostInOneLoop = 0;
  uint32_t longestLoopMs = 0;
  void happened() {
    ++inThisLoop;
    if (inThisLoop > mostInOneLoop) mostInOneLoop = inThisLoop;
  }
};

struct HttpAnswer {
  int status;
  std::string body;
  long retryAfter;  // -1: no header
};

struct HttpRequest {
  std::string path;
  std::string bearer;
  uint32_t at;
};

class FakeHttp : public smserver::HttpClient {
 public:
  FakeHttp(FakeClock& clock, BlockingOps& ops) : clock_(clock), ops_(ops) {}

  void answer(int status, const std::string& body = "", long retryAfter = -1) {
    answers.push_back(HttpAnswer{status, body, retryAfter});
  }

  int get(const char* path, const char* bearer, char* body, size_t bodySize,
          long* retryAfterSeconds) override {
    ops_.happened();
    if (sessionOpen && *sessionOpen) ++requestsDuringMqttSession;
    requests.push_back(HttpRequest{path, bearer, clock_.now});
    bodySizes.push_back(bodySize);
    clock_.advance(stallMs);
    *retryAfterSeconds = -1;
    body[0] = '\0';
    if (answers.empty()) return smserver::kHttpErrorConnect;  // unscripted: the network is down
    HttpAnswer a = answers.front();
    answers.pop_front();
    // As the real client: a body that does not fit is not kept at all.
    if (a.body.size() < bodySize) std::memcpy(body, a.body.c_str(), a.body.size() + 1);
    *retryAfterSeconds = a.retryAfter;
    return a.status;
  }

  size_t count(const std::string& prefix) const {
    size_t n = 0;
    for (size_t i = 0; i < requests.size(); ++i) {
      if (requests[i].path.compare(0, prefix.size(), prefix) == 0) ++n;
    }
    return n;
  }

  std::deque<HttpAnswer> answers;
  std::vector<HttpRequest> requests;
  std::vector<size_t> bodySizes;
  uint32_t stallMs = 0;               // each request takes this long
  const bool* sessionOpen = nullptr;  // the fake broker's "connected"
  int requestsDuringMqttSession = 0;  // a second TLS session would be open

 private:
  FakeClock& clock_;
  BlockingOps& ops_;
};

struct MqttConnect {
  std::string host;
  uint16_t port;
  std::string clientId, username, password;
  uint32_t at;
};

struct MqttPublish {
  std::string topic, payload;
  uint32_t at;
};

class FakeMqtt : public smserver::MqttClient {
 public:
  FakeMqtt(FakeClock& clock, BlockingOps& ops) : clock_(clock), ops_(ops) {}

  // Scripts the next connect() results; unscripted connects succeed.
  void refuse(int state) { results.push_back(state); }

  void setListener(smserver::MqttListener* l) override { listener_ = l; }

  bool connect(const char* host, uint16_t port, const char* clientId, const char* username,
               const char* password) override {
    ops_.happened();
    connects.push_back(MqttConnect{host, port, clientId, username, password, clock_.now});
    clock_.advance(stallMs);
    subscriptions.clear();
    refuseTopics = refuseEverySession;  // a new login is checked afresh
    int result = 0;
    if (!results.empty()) {
      result = results.front();
      results.pop_front();
    }
    state_ = result;
    connected_ = (result == smserver::kMqttConnected);
    return connected_;
  }
  bool connected() override { return connected_; }
  int state() override { return state_; }
  bool subscribe(const char* topic) override {
    if (!connected_) return false;
    subscriptions.push_back(topic);
    return true;
  }
  bool publish(const char* topic, const char* payload) override {
    if (inCallback_) ++publishesInsideCallback;  // PubSubClient would corrupt its buffer
    if (!connected_) return false;
    publishes.push_back(MqttPublish{topic, payload, clock_.now});
    if (refuseTopics) return true;  // go-auth: QoS 0 publish accepted, then dropped by the ACL
    if (echo && subscribed(topic)) inbound.push_back(std::make_pair(std::string(topic), std::string(payload)));
    if (serverAnswersPings && std::string(payload) == "{\"c\":\"PING\"}" &&
        topic == std::string("device/") + clientId() + "/ping") {
      inbound.push_back(std::make_pair(std::string(topic), std::string("{\"c\":\"PONG\",\"src\":\"server\"}")));
    }
    return true;
  }
  void loop() override {
    ++loops;
    std::deque<std::pair<std::string, std::string> > pending;
    pending.swap(inbound);
    while (connected_ && !pending.empty()) {
      if (!refuseTopics) deliverNow(pending.front().first, pending.front().second);
      pending.pop_front();
    }
  }
  void disconnect() override {
    ++disconnects;
    connected_ = false;
    state_ = smserver::kMqttDisconnected;
  }

  // Test controls.
  void receive(const std::string& topic, const std::string& payload) {
    inbound.push_back(std::make_pair(topic, payload));
  }
  void drop(int state = smserver::kMqttConnectionLost) {
    connected_ = false;
    state_ = state;
  }
  bool subscribed(const std::string& topic) const {
    for (size_t i = 0; i < subscriptions.size(); ++i) {
      if (subscriptions[i] == topic) return true;
    }
    return false;
  }
  size_t countPublishes(const std::string& topic, const std::string& payload) const {
    size_t n = 0;
    for (size_t i = 0; i < publishes.size(); ++i) {
      if (publishes[i].topic == topic && publishes[i].payload == payload) ++n;
    }
    return n;
  }

  const bool* connectedFlag() const { return &connected_; }
  std::string clientId() const { return connects.empty() ? std::string() : connects.back().clientId; }

  std::deque<int> results;
  std::vector<MqttConnect> connects;
  std::vector<std::string> subscriptions;
  std::vector<MqttPublish> publishes;
  std::deque<std::pair<std::string, std::string> > inbound;
  bool echo = true;
  bool serverAnswersPings = false;  // the pinger: a PONG for each PING
  bool refuseTopics = false;        // every publish and delivery denied, session kept open
  bool refuseEverySession = false;  // the same for every new session (a broken ACL hook)
  uint32_t stallMs = 0;             // each connect takes this long
  int loops = 0;
  int disconnects = 0;
  int publishesInsideCallback = 0;

 private:
  void deliverNow(const std::string& topic, const std::string& payload) {
    if (!listener_ || !subscribed(topic)) return;
    inCallback_ = true;
    listener_->onMqttMessage(topic.c_str(), reinterpret_cast<const uint8_t*>(payload.data()),
                             payload.size());
    inCallback_ = false;
  }

  FakeClock& clock_;
  BlockingOps& ops_;
  smserver::MqttListener* listener_ = nullptr;
  bool connected_ = false;
  bool inCallback_ = false;
  int state_ = smserver::kMqttDisconnected;
};

/**
 * The ESP8266 EEPROM emulation: a flash image, and a RAM copy that exists
 * only between open() and close(). Each commit() would erase a flash sector.
 */
class MemoryStorage : public smserver::ByteStorage {
 public:
  explicit MemoryStorage(size_t size = 512, uint8_t fill = 0xFF) : bytes(size, fill) {}
  bool open() override {
    if (!available) return false;
    ++opens;
    isOpen = true;
    return true;
  }
  void close() override { isOpen = false; }
  size_t size() override { return bytes.size(); }
  uint8_t read(size_t address) override {
    if (!isOpen) ++accessWhileClosed;
    return bytes.at(address);
  }
  void write(size_t address, uint8_t value) override {
    if (!isOpen) ++accessWhileClosed;
    bytes.at(address) = value;
  }
  bool commit() override {
    if (!isOpen) ++accessWhileClosed;
    ++commits;
    return true;
  }
  std::vector<uint8_t> bytes;
  bool available = true;  // false: the sketch holds EEPROM with too few bytes
  bool isOpen = false;
  int opens = 0;
  int commits = 0;
  int accessWhileClosed = 0;
};

class FakeWallClock : public smserver::WallClock {
 public:
  void start() override { ++starts; }
  bool isSet() override { return set; }
  bool set = false;
  int starts = 0;
};

class RecordingLog : public smserver::Log {
 public:
  void line(const char* text) override { lines.push_back(text); }
  bool contains(const std::string& fragment) const {
    for (size_t i = 0; i < lines.size(); ++i) {
      if (lines[i].find(fragment) != std::string::npos) return true;
    }
    return false;
  }
  std::vector<std::string> lines;
};

#endif  // SMSERVER_TEST_FAKES_H
