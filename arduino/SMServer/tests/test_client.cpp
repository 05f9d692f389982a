/*
 * test_client.cpp - the device state machine against fake HTTP, broker,
 * clock and EEPROM: every registration answer, /mqtt, the one-shot token
 * refresh, backoff growth and cap, pings and pongs, echoes, the queue, and
 * that loop() never waits.
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
  Harness() : http(clock), mqtt(clock), store(eeprom, 0, 1024), client(clock, http, mqtt, store, &log) {
    settings.uuid = kUuid;
    settings.registrationSecret = kSecret;
    settings.kind = kMaster;
    settings.jitterPercent = 0;  // exact waits; jitter has its own test
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
    for (int i = 0; i < 6; ++i) client.loop();
  }

  // Registration, /mqtt and connect all succeed.
  void connectFully() {
    http.answer(200, kOkToken);
    http.answer(200, kOkBroker);
    begin();
    run(0);
  }

  FakeClock clock;
  FakeHttp http;
  FakeMqtt mqtt;
  MemoryStorage eeprom{1024};
  EepromKeyValueStore store;
  RecordingLog log;
  DeviceClient client;
  Settings settings;
};

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
  CHECK(h.log.contains("token request: network error (-1), retry in 20 s"));
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

TEST(client_pings_every_15_seconds) {
  Harness h;
  h.mqtt.echo = false;
  h.connectFully();
  uint32_t start = h.clock.now;
  h.run(60000);
  std::vector<uint32_t> times;
  for (size_t i = 0; i < h.mqtt.publishes.size(); ++i) {
    const MqttPublish& p = h.mqtt.publishes[i];
    if (p.topic == kPingTopic && p.payload == "{\"c\":\"PING\"}") times.push_back(p.at - start);
  }
  CHECK_EQ(times.size(), 5u);
  for (size_t i = 0; i < times.size(); ++i) CHECK_EQ(times[i], 15000u * i);
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
