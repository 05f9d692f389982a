/*
 * Basic - registers one master device with iot_server, keeps it online
 * (PING every 10 s, PONG to the server's PINGs) and publishes a reading on
 * device/<uuid>/data every 30 s. Messages received on its topics are printed.
 * Plain http:// and MQTT, for a server on your LAN; SecureFleet shows TLS.
 *
 * Before flashing: fill in WiFi, the server URL, a uuid of your own and the
 * master registration secret (DEVICE_MASTER_SECRET_KEY). Then claim the uuid
 * as its owner (POST /devices/<uuid>/claim); until then the Serial monitor
 * shows "NOT_REGISTERED" and the device retries with a growing wait.
 */
#include <ArduinoJson.h>
#include <ESP8266WiFi.h>
#include <SMServer.h>

const char* WIFI_SSID = "your-ssid";
const char* WIFI_PASSWORD = "your-wifi-password";

SMServerConfig makeConfig() {
  SMServerConfig config;
  config.serverUrl = "http://192.168.1.10:5000";           // or https://...
  config.uuid = "123e4567-e89b-12d3-a456-426614174000";    // one per device
  config.registrationSecret = "DEVICE_MASTER_SECRET_KEY value";
  config.kind = smserver::kMaster;
  // For https:// trust the CA (see the SecureFleet example) or pin the
  // server's public key: config.httpsCaCert = ... or config.httpsPublicKey = ...
  return config;
}

SMServer device(makeConfig());
uint32_t lastReadingAt = 0;

void setup() {
  Serial.begin(115200);
  WiFi.mode(WIFI_STA);
  WiFi.begin(WIFI_SSID, WIFI_PASSWORD);
  device.begin();  // loop() waits for WiFi by itself
}

void loop() {
  device.loop();  // never blocks on a delay: keep loop() free of delay() too

  smserver::Message message;
  while (device.pop(message)) {
    Serial.printf("message on %s: %s\n", message.topic, message.payload);
  }

  if (device.connected() && millis() - lastReadingAt >= 30000) {
    lastReadingAt = millis();
    JsonDocument reading;
    reading["uptime_s"] = millis() / 1000;
    reading["rssi"] = WiFi.RSSI();
    device.publishData(reading);
  }
}
