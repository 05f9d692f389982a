/*
 * test_client.cpp - the device state machine against fake HTTP, broker,
 * clock, NTP and EEPROM: every registration answer, /mqtt, the one-shot token
 * refresh, backoff growth and cap, pings and pongs, echoes, the queue,
 * liveness after a revoke, flash writes, the clock wait for CA trust, and
 * the timing bound of one loop() call.
 */
#include <chrono>
#include <string>

#include "fakes.h"
#include "sm_client.h"
#include "sm_kvstore.h"
#include "test_framework.h"

using namespace smserver;

namespace {

const char kUuid[] = "123e4567-e89b-12d3-a456-426614174000";
const char kAgentUuid[] = "abcdef01-2345-6789-abcd-ef0123456789";
const char kSecret[] = "master-secret";
const std::string kPingTopic = std::string("device/") + kUuid + "/ping";
const std::string kDataTopic = std::string("device/") + kUuid + "/data";
const std::string kOkToken = "{\"c\":\"OK\",\"t\":\"tok-1\"}";
const std::string kOkBroker = "{\"c\":\"OK\",\"ip\":\"broker.local:1883\"}";

struct Harness {
  explicit Harness(bool caTrust = false)
      : http(clock, ops),
        mqtt(clock, ops),
        store(eeprom, 0, 1024),
        client(clock, http, mqtt, store, &log, caTrust ? &wallClock : nullptr) {
    settings.uuid = kUuid;
    settings.registrationSecret = kSecret;
    settings.kind = kMaster;
    settings.jitterPercent = 0;  // exact waits; jitter has its own test
    http.sessionOpen = mqtt.connectedFlag();
  }

  bool begin() { return client.begin(settings); }

  // Advances time by `ms` in `step` increments, calling loop() at every
  // tick as a sketch's loop() would. loop() does at most one network step per
  // call, so each tick calls it a few times to let immediate steps chain.
  void run(uint32_t ms, uint32_t step = 100) {
    for (uint32_t t = 0; t < ms; t += step) {
      tick();
      clock.advance(step);
    }
    tick();
  }
  void tick() {
    for (int i = 0; i < 10; ++i) loopOnce();
  }
  // One loop() call, measured: how many blocking steps it ran, how long it took.
  void loopOnce() {
    ops.inThisLoop = 0;
    uint32_t before = clock.now;
    client.loop();
    uint32_t took = clock.now - before;
    if (took > ops.longestLoopMs) ops.longestLoopMs = took;
  }

  // Registration, /mqtt and connect all succeed.
  void connectFully() {
    http.answer(200, kOkToken);
    http.answer(200, kOkBroker);
    begin();
    run(0);
  }

  FakeClock clock;
  BlockingOps ops;
  FakeHttp http;
  FakeMqtt mqtt;
  MemoryStorage eeprom{1024};
  EepromKeyValueStore store;
  RecordingLog log;
  FakeWallClock wallClock;
  DeviceClient client;
  Settings settings;
};

// Stores a token for kUuid as a previous boot would have, and returns the commit count.
int storeToken(Harness& h, const char* token) {
  KeyValue pairs[] = {{"uuid", kUuid}, {"token", token}};
  h.store.putAll(pairs, 2);
  return h.eeprom.commits;
}

// Time of the n-th request whose path starts with `prefix`.
uint32_t requestTime(const FakeHttp& http, const std::string& prefix, size_t n) {
  size_t seen = 0;
  for (size_t i = 0; i < http.requests.size(); ++i) {
    if (http.requests[i].path.compare(0, prefix.size(), prefix) == 0 && seen++ == n) {
      return http.requests[i].at;
    }
  }
  return 0;
}

const char kAuth[] = "/auth/devices/request";

}  // namespace

// ------------------------------------------------------------- begin

TEST(client_rejects_malformed_uuids) {
  const char* bad[] = {"", "123e4567e89b12d3a456426614174000", "{123e4567-e89b-12d3-a456-426614174000}",
                       "123e4567-e89b-12d3-a456-42661417400g", "urn:uuid:123e4567-e89b-12d3-a456-426614174000"};
  for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); ++i) {
    Harness h;
    h.settings.uuid = bad[i];
    CHECK(!h.begin());
    h.run(10000);
    CHECK(h.http.requests.empty());
    CHECK_EQ(h.client.status(), kIdle);
  }
  Harness h;
  h.settings.registrationSecret = "";
  CHECK(!h.begin());
}

TEST(client_lowercases_the_uuid_everywhere) {
  Harness h;
  h.settings.uuid = "123E4567-E89B-12D3-A456-426614174000";
  h.http.answer(200, kOkToken);
  h.http.answer(200, kOkBroker);
  CHECK(h.begin());
  h.run(0);
  CHECK_EQ(h.http.requests.at(0).path, std::string(kAuth) + "?uuid=" + kUuid);
  CHECK_EQ(h.mqtt.connects.at(0).clientId, kUuid);
  CHECK_EQ(h.mqtt.connects.at(0).username, std::string("device_") + kUuid);
  CHECK(h.mqtt.subscribed(kPingTopic));
}

// ------------------------------------------------------- registration

TEST(client_200_registers_fetches_broker_and_connects) {
  Harness h;
  h.connectFully();
  CHECK_EQ(h.http.requests.size(), 2u);
  CHECK_EQ(h.http.requests[0].path, std::string(kAuth) + "?uuid=" + kUuid);
  CHECK_EQ(h.http.requests[0].bearer, kSecret);
  CHECK_EQ(h.http.requests[1].path, "/mqtt");
  CHECK_EQ(h.http.requests[1].bearer, "tok-1");
  CHECK_EQ(h.mqtt.connects.size(), 1u);
  CHECK_EQ(h.mqtt.connects[0].host, "broker.local");
  CHECK_EQ(h.mqtt.connects[0].port, 1883);
  CHECK_EQ(h.mqtt.connects[0].clientId, kUuid);
  CHECK_EQ(h.mqtt.connects[0].username, std::string("device_") + kUuid);
  CHECK_EQ(h.mqtt.connects[0].password, "tok-1");
  CHECK(h.client.connected());
  CHECK_EQ(h.client.status(), kConnected);
  CHECK(h.mqtt.subscribed(kPingTopic));
  CHECK(h.mqtt.subscribed(kDataTopic));
  CHECK_EQ(h.mqtt.subscriptions.size(), 2u);  // a master with no agents
  char stored[32];
  CHECK(h.store.get("token", stored, sizeof(stored)));
  CHECK_EQ(stored, "tok-1");
  CHECK(h.log.contains("token received"));
  CHECK(h.log.contains("MQTT connected"));
}

TEST(client_stored_token_skips_registration) {
  Harness h;
  h.store.put("uuid", kUuid);
  h.store.put("token", "saved");
  h.http.answer(200, kOkBroker);
  h.begin();
  h.run(0);
  CHECK_EQ(h.http.count(kAuth), 0u);
  CHECK_EQ(h.http.requests.at(0).bearer, "saved");
  CHECK(h.client.connected());
  CHECK(h.log.contains("using the stored token"));
}

TEST(client_ignores_a_token_stored_for_another_uuid) {
  Harness h;
  h.store.put("uuid", kAgentUuid);
  h.store.put("token", "someone-elses");
  h.connectFully();
  CHECK_EQ(h.http.requests.at(0).path, std::string(kAuth) + "?uuid=" + kUuid);
  CHECK_EQ(h.mqtt.connects.at(0).password, "tok-1");
}

TEST(client_handles_real_sized_tokens) {
  // flask-jwt-extended device tokens are ~430 bytes; leave room to grow.
  Harness h;
  std::string token(600, 'x');
  h.http.answer(200, "{\"c\":\"OK\",\"t\":\"" + token + "\"}");
  h.http.answer(200, kOkBroker);
  h.begin();
  h.run(0);
  CHECK(h.client.connected());
  CHECK_EQ(h.mqtt.connects.at(0).password, token);
  char stored[SMSERVER_TOKEN_SIZE];
  CHECK(h.store.get("token", stored, sizeof(stored)));  // fits the 1024-byte default store
  CHECK_EQ(std::string(stored), token);
}

TEST(client_401_waits_with_growing_capped_backoff) {
  Harness h;
  for (int i = 0; i < 8; ++i) h.http.answer(401, "{\"c\":\"NOT_REGISTERED\"}");
  h.begin();
  h.run(400000);
  // 5, 10, 20, 40, 80 s, then capped at 120 s.
  const uint32_t expected[] = {5000, 10000, 20000, 40000, 80000, 120000, 120000};
  CHECK_EQ(h.http.count(kAuth), 8u);
  for (size_t i = 0; i < 7; ++i) {
    CHECK_EQ(requestTime(h.http, kAuth, i + 1) - requestTime(h.http, kAuth, i), expected[i]);
  }
  CHECK_EQ(h.client.status(), kNotRegistered);
  CHECK(h.log.contains("NOT_REGISTERED (claim or link the device), retry in 5 s"));
  CHECK(h.log.contains("retry in 120 s"));
}

TEST(client_401_sets_not_registered_status) {
  Harness h;
  h.http.answer(401, "{\"c\":\"NOT_REGISTERED\"}");
  h.begin();
  h.run(0);
  CHECK_EQ(h.client.status(), kNotRegistered);
  CHECK_EQ(h.client.waitRemainingMs(), 5000u);
  h.run(4900);
  CHECK_EQ(h.http.requests.size(), 1u);  // no hammering before the wait is over
}

TEST(client_403_waits_long_and_reports) {
  Harness h;
  h.http.answer(403, "{\"c\":\"FORBIDDEN\"}");
  h.begin();
  h.run(0);
  CHECK_EQ(h.client.status(), kForbidden);
  CHECK(h.log.contains("FORBIDDEN (wrong secret or kind, or device disabled), retry in 3600 s"));
  h.run(3599000, 1000);
  CHECK_EQ(h.http.requests.size(), 1u);
  h.run(1000, 1000);
  CHECK_EQ(h.http.requests.size(), 2u);
}

TEST(client_429_honours_retry_after) {
  Harness h;
  h.http.answer(429, "{\"c\":\"RATE_LIMITED\"}", 7);
  h.http.answer(200, kOkToken);
  h.http.answer(200, kOkBroker);
  h.begin();
  h.run(0);
  CHECK_EQ(h.client.status(), kRateLimited);
  h.run(6900);
  CHECK_EQ(h.http.requests.size(), 1u);
  h.run(100);
  CHECK_EQ(requestTime(h.http, kAuth, 1) - requestTime(h.http, kAuth, 0), 7000u);
  CHECK(h.client.connected());
  CHECK(h.log.contains("RATE_LIMITED, retry in 7 s"));
}

TEST(client_429_without_header_backs_off_and_huge_header_is_capped) {
  Harness h;
  h.http.answer(429, "{\"c\":\"RATE_LIMITED\"}");
  h.http.answer(429, "{\"c\":\"RATE_LIMITED\"}", 999999999L);
  h.begin();
  h.run(0);
  CHECK_EQ(h.client.waitRemainingMs(), 5000u);
  h.run(5000);
  CHECK_EQ(h.client.waitRemainingMs(), 3600000u);  // maxRetryAfterMs
}

TEST(client_400_backs_off) {
  Harness h;
  h.http.answer(400, "{\"c\":\"BAD_REQUEST\"}");
  h.begin();
  h.run(0);
  CHECK_EQ(h.client.status(), kBackingOff);
  CHECK_EQ(h.client.waitRemainingMs(), 5000u);
  CHECK(h.log.contains("BAD_REQUEST, retry in 5 s"));
}

TEST(client_5xx_and_network_errors_back_off) {
  Harness h;
  h.http.answer(500, "{\"c\":\"ERROR\"}");
  h.http.answer(503, "{\"c\":\"ERROR\"}");
  // then unscripted: network error (-1)
  h.begin();
  h.run(0);
  CHECK(h.log.contains("token request: HTTP 500, retry in 5 s"));
  h.run(5000);
  CHECK(h.log.contains("token request: HTTP 503, retry in 10 s"));
  h.run(10000);
  CHECK(h.log.contains("token request: TCP connect failed (-2), retry in 20 s"));
  CHECK_EQ(h.http.requests.size(), 3u);
  CHECK_EQ(h.client.status(), kBackingOff);
}

TEST(client_unreadable_200_backs_off) {
  Harness h;
  h.http.answer(200, "<html>proxy login</html>");
  h.http.answer(200, "{\"c\":\"OK\"}");  // no token
  h.begin();
  h.run(0);
  CHECK_EQ(h.client.status(), kBackingOff);
  h.run(5000);
  CHECK_EQ(h.client.status(), kBackingOff);
  CHECK(!h.client.hasToken());
  CHECK(h.mqtt.connects.empty());
}

// ---------------------------------------------------------------- /mqtt

TEST(client_mqtt_endpoint_errors_retry_mqtt_not_registration) {
  Harness h;
  h.http.answer(200, kOkToken);
  h.http.answer(500, "{\"c\":\"ERROR\"}");
  h.http.answer(200, "{\"c\":\"OK\",\"ip\":\"nonsense:port\"}");
  h.http.answer(200, kOkBroker);
  h.begin();
  h.run(0);
  CHECK(h.log.contains("/mqtt: HTTP 500, retry in 5 s"));
  h.run(5000);
  CHECK(h.log.contains("/mqtt: unreadable 200 answer"));
  h.run(10000);
  CHECK_EQ(h.http.count(kAuth), 1u);
  CHECK_EQ(h.http.count("/mqtt"), 3u);
  CHECK(h.client.connected());
}

TEST(client_mqtt_forbidden_refreshes_the_token_once) {
  Harness h;
  h.store.put("uuid", kUuid);
  h.store.put("token", "revoked");
  h.http.answer(403, "{\"c\":\"FORBIDDEN\"}");
  h.http.answer(200, "{\"c\":\"OK\",\"t\":\"tok-2\"}");
  h.http.answer(200, kOkBroker);
  h.begin();
  h.run(0);
  CHECK_EQ(h.http.requests.size(), 3u);
  CHECK_EQ(h.http.requests[0].path, "/mqtt");
  CHECK_EQ(h.http.requests[1].path.compare(0, sizeof(kAuth) - 1, kAuth), 0);
  CHECK_EQ(h.http.requests[1].at, h.http.requests[0].at);  // at once, no wait
  CHECK_EQ(h.http.requests[2].bearer, "tok-2");
  CHECK(h.client.connected());
  char stored[16];
  CHECK(h.store.get("token", stored, sizeof(stored)));
  CHECK_EQ(stored, "tok-2");
  CHECK(h.log.contains("/mqtt: FORBIDDEN (token refused), requesting a new token"));
}

TEST(client_mqtt_forbidden_twice_backs_off) {
  Harness h;
  h.http.answer(200, kOkToken);
  h.http.answer(403, "{\"c\":\"FORBIDDEN\"}");
  h.http.answer(200, "{\"c\":\"OK\",\"t\":\"tok-2\"}");
  h.http.answer(403, "{\"c\":\"FORBIDDEN\"}");
  h.begin();
  h.run(4900);
  CHECK_EQ(h.http.count(kAuth), 2u);  // the first and the one refresh
  CHECK_EQ(h.http.count("/mqtt"), 2u);
  CHECK_EQ(h.client.status(), kBackingOff);
  CHECK(!h.client.hasToken());
  h.run(100);
  CHECK_EQ(h.http.count(kAuth), 3u);  // one more, after the wait
}

// ------------------------------------------------------ broker refusal

TEST(client_broker_not_authorized_refreshes_once_and_reconnects) {
  Harness h;
  h.http.answer(200, kOkToken);
  h.http.answer(200, kOkBroker);
  h.http.answer(200, "{\"c\":\"OK\",\"t\":\"tok-2\"}");
  h.http.answer(200, kOkBroker);
  h.mqtt.refuse(kMqttUnauthorized);
  h.begin();
  h.run(0);
  CHECK_EQ(h.http.count(kAuth), 2u);
  CHECK_EQ(h.mqtt.connects.size(), 2u);
  CHECK_EQ(h.mqtt.connects[0].password, "tok-1");
  CHECK_EQ(h.mqtt.connects[1].password, "tok-2");
  CHECK(h.client.connected());
  CHECK(h.log.contains("MQTT refused: not authorized (5), requesting a new token"));
}

TEST(client_bad_credentials_is_treated_as_not_authorized) {
  Harness h;
  h.http.answer(200, kOkToken);
  h.http.answer(200, kOkBroker);
  h.http.answer(200, "{\"c\":\"OK\",\"t\":\"tok-2\"}");
  h.http.answer(200, kOkBroker);
  h.mqtt.refuse(kMqttBadCredentials);
  h.begin();
  h.run(0);
  CHECK_EQ(h.http.count(kAuth), 2u);
  CHECK(h.client.connected());
}

TEST(client_second_refusal_does_not_hammer) {
  Harness h;
  for (int i = 0; i < 10; ++i) {
    h.http.answer(200, "{\"c\":\"OK\",\"t\":\"tok\"}");
    h.http.answer(200, kOkBroker);
    h.mqtt.refuse(kMqttUnauthorized);
  }
  h.begin();
  h.run(0);
  CHECK_EQ(h.http.count(kAuth), 2u);  // the first token and exactly one refresh
  CHECK_EQ(h.mqtt.connects.size(), 2u);
  CHECK_EQ(h.client.status(), kBackingOff);
  h.run(4900);
  CHECK_EQ(h.http.count(kAuth), 2u);
  h.run(100);
  CHECK_EQ(h.http.count(kAuth), 3u);
  // Each further refusal waits longer: 5 s, 10 s, 20 s...
  h.run(9900);
  CHECK_EQ(h.http.count(kAuth), 3u);
  h.run(100);
  CHECK_EQ(h.http.count(kAuth), 4u);
  CHECK(!h.client.connected());
}

TEST(client_refresh_budget_returns_after_a_good_session) {
  Harness h;
  h.connectFully();
  // The owner revokes the device: the broker drops it, the old token fails.
  h.run(60000);
  h.mqtt.drop();
  h.mqtt.refuse(kMqttUnauthorized);
  h.http.answer(200, "{\"c\":\"OK\",\"t\":\"tok-2\"}");
  h.http.answer(200, kOkBroker);
  h.run(0);
  CHECK_EQ(h.http.count(kAuth), 2u);
  CHECK(h.client.connected());
  CHECK_EQ(h.mqtt.connects.back().password, "tok-2");
}

TEST(client_broker_down_backs_off_and_refetches_address) {
  Harness h;
  h.http.answer(200, kOkToken);
  h.http.answer(200, kOkBroker);
  h.http.answer(200, "{\"c\":\"OK\",\"ip\":\"[::1]:8883\"}");
  for (int i = 0; i < 3; ++i) h.mqtt.refuse(kMqttConnectFailed);
  h.begin();
  h.run(0);
  CHECK(h.log.contains("MQTT connect failed (state -2), retry in 5 s"));
  h.run(5000);
  h.run(10000);
  CHECK_EQ(h.mqtt.connects.size(), 3u);
  CHECK_EQ(h.http.count("/mqtt"), 1u);
  h.run(20000);  // after 3 failures the address is fetched again
  CHECK_EQ(h.http.count("/mqtt"), 2u);
  CHECK_EQ(h.http.count(kAuth), 1u);  // a network failure is no reason for a new token
  CHECK(h.client.connected());
  CHECK_EQ(h.mqtt.connects.back().host, "::1");
  CHECK_EQ(h.mqtt.connects.back().port, 8883);
}

TEST(client_reconnects_after_losing_the_session) {
  Harness h;
  h.connectFully();
  h.run(60000);  // stable
  h.mqtt.drop();
  h.run(0);
  CHECK_EQ(h.mqtt.connects.size(), 2u);  // at once after a long session
  CHECK(h.client.connected());
  CHECK(h.log.contains("MQTT connection lost (state -3), reconnecting"));
  // A session that dies young backs off instead of flapping.
  h.run(1000);
  h.mqtt.drop();
  h.run(0);
  CHECK_EQ(h.mqtt.connects.size(), 2u);
  CHECK_EQ(h.client.status(), kBackingOff);
  h.run(5000);
  CHECK_EQ(h.mqtt.connects.size(), 3u);
  CHECK_EQ(h.http.count(kAuth), 1u);
}

// --------------------------------------------------------- ping / pong

TEST(client_pings_every_10_seconds) {
  // Under the server's 15 s silence window, so the server never has to PING.
  Harness h;
  h.mqtt.echo = false;
  h.mqtt.serverAnswersPings = true;
  h.connectFully();
  uint32_t start = h.clock.now;
  h.run(60000);
  std::vector<uint32_t> times;
  for (size_t i = 0; i < h.mqtt.publishes.size(); ++i) {
    const MqttPublish& p = h.mqtt.publishes[i];
    if (p.topic == kPingTopic && p.payload == "{\"c\":\"PING\"}") times.push_back(p.at - start);
  }
  CHECK_EQ(times.size(), 7u);
  for (size_t i = 0; i < times.size(); ++i) CHECK_EQ(times[i], 10000u * i);
  CHECK_EQ(h.mqtt.disconnects, 0);
}

TEST(client_answers_server_ping_with_pong) {
  Harness h;
  h.connectFully();
  h.mqtt.receive(kPingTopic, "{\"c\":\"PING\",\"src\":\"server\"}");
  h.run(200);
  CHECK_EQ(h.mqtt.countPublishes(kPingTopic, "{\"c\":\"PONG\"}"), 1u);
  CHECK_EQ(h.mqtt.publishesInsideCallback, 0);  // the PONG waits until loop() returns
  CHECK(h.log.contains("server PING, answering PONG"));
  CHECK_EQ(h.client.available(), 0u);  // protocol traffic is not for the sketch
}

TEST(client_ignores_its_own_echoes_on_the_ping_topic) {
  Harness h;
  h.connectFully();  // its first PING comes back from the fake broker
  h.mqtt.receive(kPingTopic, "{\"c\":\"PONG\"}");  // as if our own PONG echoed
  h.mqtt.receive(kPingTopic, "{\"c\":\"PONG\",\"src\":\"server\"}");
  h.mqtt.receive(kPingTopic, "{\"c\":\"PING\",\"src\":\"elsewhere\"}");
  h.mqtt.receive(kPingTopic, "not json");
  h.run(1000);
  CHECK_EQ(h.mqtt.countPublishes(kPingTopic, "{\"c\":\"PONG\"}"), 0u);
  CHECK_EQ(h.client.available(), 0u);
}

// -------------------------------------------------------- messages

TEST(client_queues_messages_and_drops_own_echoes) {
  Harness h;
  h.connectFully();
  CHECK(h.client.publishData("{\"temp\":21}"));
  h.run(100);
  CHECK_EQ(h.client.available(), 0u);  // our echo is not news
  h.mqtt.receive(kDataTopic, "{\"temp\":21}");  // the same bytes, but not ours
  h.run(100);
  CHECK_EQ(h.client.available(), 1u);
  Message m;
  CHECK(h.client.pop(m));
  CHECK_EQ(m.topic, kDataTopic.c_str());
  CHECK_EQ(m.payload, "{\"temp\":21}");
  CHECK_EQ(m.length, 11u);
  CHECK(!h.client.pop(m));
}

TEST(client_queue_drops_the_oldest_when_full) {
  Harness h;
  h.connectFully();
  size_t capacity = MessageQueue::capacity();
  for (size_t i = 0; i < capacity + 3; ++i) h.mqtt.receive(kDataTopic, "m" + std::to_string(i));
  h.run(100);
  CHECK_EQ(h.client.available(), capacity);
  CHECK_EQ(h.client.droppedMessages(), 3u);
  CHECK(h.log.contains("queue full, dropped the oldest message"));
  Message m;
  CHECK(h.client.pop(m));
  CHECK_EQ(m.payload, "m3");
  std::string last;
  while (h.client.pop(m)) last = m.payload;
  CHECK_EQ(last, "m" + std::to_string(capacity + 2));
}

TEST(client_drops_oversize_messages) {
  Harness h;
  h.connectFully();
  h.mqtt.receive(kDataTopic, std::string(SMSERVER_MAX_PAYLOAD + 1, 'x'));
  h.mqtt.receive(kDataTopic, std::string(SMSERVER_MAX_PAYLOAD, 'y'));
  h.run(100);
  CHECK_EQ(h.client.available(), 1u);
  CHECK_EQ(h.client.droppedMessages(), 1u);
  CHECK(h.log.contains("too large"));
}

TEST(client_master_and_agent_exchange_on_the_agent_master_topic) {
  const std::string agentTopic = std::string("device/") + kAgentUuid + "/master";
  Harness master;
  CHECK(master.client.addAgent("ABCDEF01-2345-6789-ABCD-EF0123456789"));
  master.connectFully();
  CHECK(master.mqtt.subscribed(agentTopic));
  CHECK(master.client.publishToAgent(kAgentUuid, "{\"led\":1}"));
  CHECK(!master.client.publishToMaster("{}"));  // a master has no master
  CHECK_EQ(master.mqtt.publishes.back().topic, agentTopic);

  Harness agent;
  agent.settings.uuid = kAgentUuid;
  agent.settings.kind = kAgent;
  agent.connectFully();
  CHECK(agent.mqtt.subscribed(agentTopic));
  CHECK_EQ(agent.mqtt.subscriptions.size(), 3u);
  agent.mqtt.receive(agentTopic, "{\"led\":1}");  // what the master sent
  agent.run(100);
  Message m;
  CHECK(agent.client.pop(m));
  CHECK_EQ(m.topic, agentTopic.c_str());
  CHECK(agent.client.publishToMaster("{\"led\":\"on\"}"));
  CHECK(!agent.client.publishToAgent(kUuid, "{}"));
  agent.run(100);
  CHECK_EQ(agent.client.available(), 0u);  // its own reply's echo

  master.mqtt.receive(agentTopic, "{\"led\":\"on\"}");
  master.run(100);
  CHECK(master.client.pop(m));
  CHECK_EQ(m.payload, "{\"led\":\"on\"}");
}

TEST(client_publish_needs_a_session) {
  Harness h;
  h.begin();
  CHECK(!h.client.publishData("{}"));
  CHECK(h.mqtt.publishes.empty());
}

// ------------------------------------------------------- timing

TEST(client_loop_never_waits) {
  Harness h;
  h.http.answer(401, "{\"c\":\"NOT_REGISTERED\"}");
  h.begin();
  h.client.loop();
  uint32_t frozen = h.clock.now;
  auto started = std::chrono::steady_clock::now();
  for (int i = 0; i < 100000; ++i) h.client.loop();
  auto elapsed = std::chrono::steady_clock::now() - started;
  CHECK_EQ(h.http.requests.size(), 1u);  // waiting is not retrying
  CHECK_EQ(h.clock.now, frozen);         // the core has no way to sleep...
  CHECK(elapsed < std::chrono::seconds(1));  // ...and it does not spin either
}

TEST(client_survives_the_millis_wrap) {
  Harness h;
  h.clock.now = 0xFFFFFFFFu - 2000;
  h.http.answer(401, "{\"c\":\"NOT_REGISTERED\"}");
  h.http.answer(200, kOkToken);
  h.http.answer(200, kOkBroker);
  h.begin();
  h.run(4900);
  CHECK_EQ(h.http.requests.size(), 1u);
  h.run(100);
  CHECK_EQ(h.http.requests.size(), 3u);
  CHECK(h.client.connected());
  uint32_t pings = static_cast<uint32_t>(h.mqtt.countPublishes(kPingTopic, "{\"c\":\"PING\"}"));
  h.run(15000);
  CHECK_EQ(h.mqtt.countPublishes(kPingTopic, "{\"c\":\"PING\"}"), pings + 1u);
}

TEST(client_jitter_stays_within_bounds) {
  Backoff b;
  b.configure(1000, 8000, 20, 12345);
  const uint32_t base[] = {1000, 2000, 4000, 8000, 8000, 8000};
  for (size_t i = 0; i < 6; ++i) {
    uint32_t w = b.next();
    CHECK(w >= base[i]);
    CHECK(w <= base[i] + base[i] / 5);
  }
  b.reset();
  uint32_t w = b.next();
  CHECK(w >= 1000u && w <= 1200u);
}

TEST(client_status_names) {
  CHECK_EQ(statusName(kNotRegistered), "not registered");
  CHECK_EQ(statusName(kConnected), "connected");
}

// --------------------------------------------------------- flash wear

TEST(client_saves_the_token_once_a_session_worked_with_it) {
  Harness h;
  h.http.answer(200, kOkToken);
  h.http.answer(200, kOkBroker);
  h.http.answer(200, "{\"c\":\"OK\",\"t\":\"tok-2\"}");
  h.http.answer(200, kOkBroker);
  h.mqtt.refuse(kMqttUnauthorized);  // tok-1 is refused: it must never reach flash
  h.begin();
  h.run(0);
  CHECK(h.client.connected());
  CHECK_EQ(h.eeprom.commits, 1);  // uuid and token, in one sector write
  char stored[32];
  CHECK(h.store.get("token", stored, sizeof(stored)));
  CHECK_EQ(stored, "tok-2");
  // Reconnects with the same token write nothing.
  h.run(60000);
  h.mqtt.drop();
  h.run(1000);
  CHECK(h.client.connected());
  CHECK_EQ(h.mqtt.connects.size(), 3u);
  CHECK_EQ(h.eeprom.commits, 1);
  CHECK_EQ(h.eeprom.accessWhileClosed, 0);
}

TEST(client_100_broker_refusals_write_no_flash) {
  Harness h;
  int before = storeToken(h, "stored");
  // A misconfigured auth hook: every login is refused, old token and new.
  for (int i = 0; i < 100; ++i) {
    h.http.answer(200, kOkBroker);
    h.mqtt.refuse(kMqttUnauthorized);
    h.http.answer(200, "{\"c\":\"OK\",\"t\":\"fresh-" + std::to_string(i) + "\"}");
  }
  h.begin();
  for (int cycle = 0; cycle < 100 && !h.http.answers.empty(); ++cycle) h.run(130000, 1000);
  CHECK(h.mqtt.connects.size() >= 100u);
  CHECK_EQ(h.eeprom.commits, before);  // not one sector erase
  char stored[32];
  CHECK(h.store.get("token", stored, sizeof(stored)));
  CHECK_EQ(stored, "stored");  // refused, but never erased: marked stale in RAM only
  CHECK(!h.client.connected());
}

TEST(client_100_mqtt_endpoint_refusals_write_no_flash) {
  Harness h;
  int before = storeToken(h, "revoked");
  for (int i = 0; i < 100; ++i) {
    h.http.answer(403, "{\"c\":\"FORBIDDEN\"}");  // /mqtt refuses the token
    h.http.answer(200, kOkToken);                 // a new one, refused again below
  }
  h.begin();
  for (int cycle = 0; cycle < 100 && !h.http.answers.empty(); ++cycle) h.run(130000, 1000);
  CHECK(h.http.count("/mqtt") >= 100u);
  CHECK_EQ(h.eeprom.commits, before);
}

TEST(client_stale_token_after_reboot_costs_one_request_not_a_write) {
  Harness h;
  int before = storeToken(h, "revoked");
  h.http.answer(403, "{\"c\":\"FORBIDDEN\"}");
  h.http.answer(200, "{\"c\":\"OK\",\"t\":\"tok-2\"}");
  h.http.answer(200, kOkBroker);
  h.begin();
  h.run(0);
  CHECK(h.client.connected());
  CHECK_EQ(h.eeprom.commits, before + 1);  // the working token replaces the stale one
}

TEST(client_forget_token_erases_it) {
  Harness h;
  h.connectFully();
  h.client.forgetToken();
  char stored[32];
  CHECK(!h.store.get("token", stored, sizeof(stored)));
  CHECK(!h.client.hasToken());
}

TEST(client_unusable_eeprom_keeps_the_token_in_ram) {
  Harness h;
  h.eeprom.available = false;  // the sketch opened EEPROM with too few bytes
  h.connectFully();
  CHECK(h.client.connected());
  CHECK(h.log.contains("could not save the token to EEPROM (kept in RAM)"));
  CHECK_EQ(h.eeprom.commits, 0);
}

// ------------------------------------------------------------ liveness

TEST(client_revoked_session_whose_topics_are_refused_comes_back) {
  // go-auth and amqtt after a revoke: the TCP session stays, keepalive is
  // answered, but every publish and delivery is denied.
  Harness h;
  h.mqtt.serverAnswersPings = true;
  h.connectFully();
  h.run(60000);
  CHECK_EQ(h.mqtt.disconnects, 0);
  h.mqtt.refuseTopics = true;
  uint32_t refusedAt = h.clock.now;
  h.http.answer(403, "{\"c\":\"FORBIDDEN\"}");  // /mqtt: the old token is revoked
  h.http.answer(200, "{\"c\":\"OK\",\"t\":\"tok-2\"}");
  h.http.answer(200, kOkBroker);
  h.run(40000);
  CHECK_EQ(h.mqtt.disconnects, 1);
  CHECK(h.log.contains("MQTT: nothing heard for 25 s (revoked, or topics refused), retry in 5 s"));
  CHECK(h.log.contains("/mqtt: FORBIDDEN (token refused), requesting a new token"));
  CHECK(h.client.connected());
  CHECK_EQ(h.mqtt.connects.back().password, "tok-2");
  // Dropped within two and a half ping intervals of the last message heard.
  uint32_t mqttCall = requestTime(h.http, "/mqtt", 1);
  CHECK(mqttCall - refusedAt <= 25000u + 5000u);
  CHECK_EQ(h.http.requestsDuringMqttSession, 0);
  // A revoke on EMQX is a kick instead: the lost-session path handles it.
}

TEST(client_session_with_refused_topics_reconnects_with_backoff) {
  // A broker that keeps accepting the login but refuses every topic (a
  // broken ACL hook): each session is dropped after 25 s, and the waits
  // between them grow as after any failure.
  Harness h;
  h.connectFully();
  h.run(60000);  // a good, stable session first
  for (int i = 0; i < 4; ++i) h.http.answer(200, kOkBroker);
  h.mqtt.refuseEverySession = h.mqtt.refuseTopics = true;
  h.run(180000, 500);
  const char* drop = "MQTT: nothing heard for 25 s (revoked, or topics refused), retry in ";
  CHECK(h.log.contains(std::string(drop) + "5 s"));
  CHECK(h.log.contains(std::string(drop) + "10 s"));
  CHECK(h.log.contains(std::string(drop) + "20 s"));
  CHECK(h.mqtt.disconnects >= 4);
  CHECK_EQ(h.http.count("/mqtt"), 5u);  // each new session goes through /mqtt
  CHECK_EQ(h.http.count(kAuth), 1u);    // the token is fine: no re-registration
  CHECK_EQ(h.eeprom.commits, 1);
}

TEST(client_stays_connected_when_only_the_server_is_silent) {
  // The broker delivers (our PINGs come back) but no PONG: the pinger is
  // down. A new session would not help, so the device stays and says so.
  Harness h;
  h.connectFully();
  h.run(120000);
  CHECK_EQ(h.mqtt.disconnects, 0);
  CHECK(h.client.connected());
  CHECK(h.log.contains("no PONG from the server for 25 s (is its pinger running?); staying connected"));
  size_t said = 0;
  for (size_t i = 0; i < h.log.lines.size(); ++i) said += h.log.lines[i].find("no PONG") != std::string::npos;
  CHECK_EQ(said, 1u);
}

TEST(client_server_pongs_alone_keep_the_session) {
  Harness h;
  h.mqtt.echo = false;  // a broker with "no local" (EMQX's ignore_loop_deliver)
  h.mqtt.serverAnswersPings = true;
  h.connectFully();
  h.run(300000);
  CHECK_EQ(h.mqtt.disconnects, 0);
  CHECK(!h.log.contains("no PONG"));
}

TEST(client_silence_limit_zero_turns_liveness_off) {
  Harness h;
  h.settings.silenceLimitMs = 0;
  h.connectFully();
  h.mqtt.refuseTopics = true;
  h.run(300000);
  CHECK(h.client.connected());
  CHECK_EQ(h.mqtt.disconnects, 0);
}

// ------------------------------------------------------ clock (CA trust)

TEST(client_ca_trust_waits_for_the_clock_before_any_request) {
  Harness h(true);
  h.http.answer(200, kOkToken);
  h.http.answer(200, kOkBroker);
  h.begin();
  CHECK_EQ(h.client.status(), kSettingClock);
  CHECK_EQ(h.wallClock.starts, 1);
  h.run(19900);
  CHECK(h.http.requests.empty());
  CHECK(!h.log.contains("clock not set"));
  h.run(200);
  CHECK(h.log.contains("clock not set: no NTP answer yet"));
  h.run(30000);
  CHECK(h.http.requests.empty());
  h.wallClock.set = true;
  h.run(100);
  CHECK(h.log.contains("clock set (NTP)"));
  CHECK(h.client.connected());
  CHECK_EQ(h.wallClock.starts, 1);
}

TEST(client_set_clock_or_no_ca_does_not_wait) {
  Harness h(true);
  h.wallClock.set = true;  // the sketch set the time already
  h.connectFully();
  CHECK(h.client.connected());
  CHECK_EQ(h.wallClock.starts, 0);
  Harness plain;  // no CA trust: no clock at all
  plain.connectFully();
  CHECK(plain.client.connected());
}

// ---------------------------------------------------- timing and memory

TEST(client_worst_case_figures_match_the_readme) {
  CHECK_EQ(httpWorstCaseMs(5000, false), 10300u);
  CHECK_EQ(httpWorstCaseMs(5000, true), 25600u);
  CHECK_EQ(mqttConnectWorstCaseMs(5000, false), 10300u);
  CHECK_EQ(mqttConnectWorstCaseMs(5000, true), 25300u);
  CHECK_EQ(mqttConnectWorstCaseMs(2500, false), 5800u);  // CONNACK: whole seconds
  CHECK_EQ(loopWorstCaseMs(5000, false, 5000, false), 10300u);
  CHECK_EQ(loopWorstCaseMs(5000, true, 5000, true), 25600u);
  CHECK_EQ(loopWorstCaseMs(5000, false, 5000, true), 25300u);
}

// Every path the state machine knows, with each network step taking as long
// as its bound allows: one loop() call never runs two of them.
void runEveryPath(Harness& h) {
  h.mqtt.serverAnswersPings = true;
  h.http.answer(401, "{\"c\":\"NOT_REGISTERED\"}");
  h.http.answer(429, "{\"c\":\"RATE_LIMITED\"}", 3);
  h.http.answer(200, kOkToken);
  h.http.answer(500, "{\"c\":\"ERROR\"}");
  h.http.answer(200, kOkBroker);
  h.mqtt.refuse(kMqttConnectFailed);
  h.mqtt.refuse(kMqttUnauthorized);
  h.http.answer(200, "{\"c\":\"OK\",\"t\":\"tok-2\"}");
  h.http.answer(200, kOkBroker);
  h.begin();
  h.run(200000, 500);
  CHECK(h.client.connected());
  h.mqtt.drop();  // EMQX kicks it
  h.run(30000, 500);
  h.mqtt.refuseTopics = true;  // go-auth refuses its topics
  h.http.answer(403, "{\"c\":\"FORBIDDEN\"}");
  h.http.answer(200, "{\"c\":\"OK\",\"t\":\"tok-3\"}");
  h.http.answer(200, kOkBroker);
  h.run(200000, 500);
  CHECK(h.client.connected());
  CHECK_EQ(h.mqtt.connects.back().password, "tok-3");
}

TEST(client_never_runs_two_blocking_steps_in_one_loop) {
  Harness h;
  runEveryPath(h);
  CHECK_EQ(h.ops.mostInOneLoop, 1);
  CHECK_EQ(h.http.requestsDuringMqttSession, 0);  // at most one TLS session at a time
}

TEST(client_one_loop_call_stays_within_the_stated_worst_case) {
  for (int tls = 0; tls < 2; ++tls) {
    Harness h;
    h.http.stallMs = httpWorstCaseMs(5000, tls != 0);
    h.mqtt.stallMs = mqttConnectWorstCaseMs(5000, tls != 0);
    runEveryPath(h);
    uint32_t bound = loopWorstCaseMs(5000, tls != 0, 5000, tls != 0);
    CHECK(h.ops.longestLoopMs > 0u);
    CHECK(h.ops.longestLoopMs <= bound);
    CHECK_EQ(h.ops.mostInOneLoop, 1);
  }
}

TEST(client_connects_and_subscribes_in_separate_loop_calls) {
  Harness h;
  h.http.answer(200, kOkToken);
  h.http.answer(200, kOkBroker);
  h.begin();
  h.loopOnce();  // token
  h.loopOnce();  // /mqtt
  h.loopOnce();  // connect
  CHECK_EQ(h.mqtt.connects.size(), 1u);
  CHECK(h.mqtt.subscriptions.empty());
  CHECK(!h.client.connected());
  CHECK(!h.client.publishData("{}"));  // not before the subscriptions
  h.loopOnce();  // subscribe, save, first PING
  CHECK_EQ(h.mqtt.subscriptions.size(), 2u);
  CHECK(h.client.connected());
}

TEST(client_reads_answers_into_bounded_buffers) {
  Harness h;
  h.connectFully();
  CHECK_EQ(h.http.bodySizes.at(0), static_cast<size_t>(SMSERVER_TOKEN_SIZE));  // registration
  CHECK_EQ(h.http.bodySizes.at(1), kHostSize + 64);                           // /mqtt
  // A token answer larger than the buffer is not read: it is no token.
  Harness big;
  big.http.answer(200, "{\"c\":\"OK\",\"t\":\"" + std::string(SMSERVER_TOKEN_SIZE, 'x') + "\"}");
  big.begin();
  big.run(0);
  CHECK(!big.client.hasToken());
  CHECK(big.log.contains("token request: unreadable 200 answer"));
  CHECK(big.mqtt.connects.empty());
}
