/*
 * MasterAgent - a master and an agent exchanging commands on the agent's
 * topic device/<agent>/master. Flash the same sketch on two boards, once with
 * ROLE_MASTER 1 and once with ROLE_MASTER 0.
 *
 * The master sends {"cmd":"toggle","n":<count>} every 10 s; the agent flips
 * its LED and answers {"led":<0|1>,"n":<count>} on the same topic, which the
 * master prints. Each side's own messages come back from the broker (MQTT
 * 3.1.1 has no "no local"); the library drops those echoes for you.
 *
 * Server side: claim MASTER_UUID as an owner, then link the agent:
 * PUT /devices/<MASTER_UUID>/agents/<AGENT_UUID>. The master learns its agents
 * from addAgent() below; the broker grants it their topics at connect.
 */
#include <ArduinoJson.h>
#include <ESP8266WiFi.h>
#include <SMServer.h>

#ifndef ROLE_MASTER
#define ROLE_MASTER 1  // 0 for the agent board
#endif

const char* WIFI_SSID = "your-ssid";
const char* WIFI_PASSWORD = "your-wifi-password";
const char* SERVER_URL = "http://192.168.1.10:5000";
const char* MASTER_UUID = "123e4567-e89b-12d3-a456-426614174000";
const char* AGENT_UUID = "abcdef01-2345-6789-abcd-ef0123456789";
const char* MASTER_SECRET = "DEVICE_MASTER_SECRET_KEY value";
const char* AGENT_SECRET = "DEVICE_AGENT_SECRET_KEY value";

SMServerConfig makeConfig() {
  SMServerConfig config;
  config.serverUrl = SERVER_URL;
#if ROLE_MASTER
  config.uuid = MASTER_UUID;
  config.registrationSecret = MASTER_SECRET;
  config.kind = smserver::kMaster;
#else
  config.uuid = AGENT_UUID;
  config.registrationSecret = AGENT_SECRET;
  config.kind = smserver::kAgent;
#endif
  return config;
}

SMServer device(makeConfig());
uint32_t lastCommandAt = 0;
uint32_t commandCount = 0;
bool ledOn = false;

void handleMessage(const smserver::Message& message) {
  JsonDocument doc;
  if (deserializeJson(doc, message.payload, message.length)) {
    Serial.printf("not JSON on %s: %s\n", message.topic, message.payload);
    return;
  }
#if ROLE_MASTER
  // An agent's reply: {"led":0|1,"n":...}
  Serial.printf("agent says led=%d (command %lu)\n", doc["led"] | -1,
                static_cast<unsigned long>(doc["n"] | 0UL));
#else
  const char* cmd = doc["cmd"] | "";
  if (strcmp(cmd, "toggle") == 0) {
    ledOn = !ledOn;
    digitalWrite(LED_BUILTIN, ledOn ? LOW : HIGH);  // the built-in LED is active low
    JsonDocument reply;
    reply["led"] = ledOn ? 1 : 0;
    reply["n"] = doc["n"] | 0UL;
    device.publishToMaster(reply);
  }
#endif
}

void setup() {
  Serial.begin(115200);
  pinMode(LED_BUILTIN, OUTPUT);
  digitalWrite(LED_BUILTIN, HIGH);
  WiFi.mode(WIFI_STA);
  WiFi.begin(WIFI_SSID, WIFI_PASSWORD);
#if ROLE_MASTER
  device.addAgent(AGENT_UUID);
#endif
  device.begin();
}

void loop() {
  device.loop();

  smserver::Message message;
  while (device.pop(message)) handleMessage(message);

#if ROLE_MASTER
  if (device.connected() && millis() - lastCommandAt >= 10000) {
    lastCommandAt = millis();
    JsonDocument command;
    command["cmd"] = "toggle";
    command["n"] = ++commandCount;
    device.publishToAgent(AGENT_UUID, command);
  }
#endif
}
