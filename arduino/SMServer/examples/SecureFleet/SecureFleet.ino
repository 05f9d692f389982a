/*
 * SecureFleet - one firmware image for a fleet in production: the HTTPS API
 * and MQTT over TLS, both trusted through the CA that signed the server's
 * certificates (ISRG Root X1, Let's Encrypt's root, valid until 2035), with
 * the clock set by NTP first (certificate dates cannot be checked without it).
 *
 * Settings and secrets come from secrets.h, which git ignores:
 *   cp secrets.h.example secrets.h   # then fill it in
 *
 * Every board gets its own uuid: the fleet prefix from secrets.h followed by
 * the board's MAC address. It is printed at boot; claim that uuid as its
 * owner (console, or POST /devices/<uuid>/claim). The server's MQTT_HOST must
 * name the broker's TLS listener (e.g. mqtt.example.com:8883).
 *
 * Memory: one TLS session at a time (the HTTPS requests close before MQTT
 * connects), with 512-byte TLS records when the server accepts MFLN. The
 * data it publishes include the free heap, so the fleet's headroom shows.
 */
#include <ArduinoJson.h>
#include <ESP8266WiFi.h>
#include <SMServer.h>

#if __has_include("secrets.h")
#include "secrets.h"
#define SECRETS_PRESENT 1
#else
// No secrets.h yet: the sketch still compiles, and says what to do at boot.
#define SECRETS_PRESENT 0
#define WIFI_SSID ""
#define WIFI_PASSWORD ""
#define SERVER_URL "https://iot.example.com"
#define DEVICE_UUID_PREFIX "00000000-0000-4000-8000-"
#define REGISTRATION_SECRET ""
#endif

// ISRG Root X1 (/etc/ssl/certs/ISRG_Root_X1.pem), kept in flash (PROGMEM):
// as a plain string its 1.9 KB would sit in RAM for good.
static const char ISRG_ROOT_X1[] PROGMEM = R"PEM(
-----BEGIN CERTIFICATE-----
MIIFazCCA1OgAwIBAgIRAIIQz7DSQONZRGPgu2OCiwAwDQYJKoZIhvcNAQELBQAw
TzELMAkGA1UEBhMCVVMxKTAnBgNVBAoTIEludGVybmV0IFNlY3VyaXR5IFJlc2Vh
cmNoIEdyb3VwMRUwEwYDVQQDEwxJU1JHIFJvb3QgWDEwHhcNMTUwNjA0MTEwNDM4
WhcNMzUwNjA0MTEwNDM4WjBPMQswCQYDVQQGEwJVUzEpMCcGA1UEChMgSW50ZXJu
ZXQgU2VjdXJpdHkgUmVzZWFyY2ggR3JvdXAxFTATBgNVBAMTDElTUkcgUm9vdCBY
MTCCAiIwDQYJKoZIhvcNAQEBBQADggIPADCCAgoCggIBAK3oJHP0FDfzm54rVygc
h77ct984kIxuPOZXoHj3dcKi/vVqbvYATyjb3miGbESTtrFj/RQSa78f0uoxmyF+
0TM8ukj13Xnfs7j/EvEhmkvBioZxaUpmZmyPfjxwv60pIgbz5MDmgK7iS4+3mX6U
A5/TR5d8mUgjU+g4rk8Kb4Mu0UlXjIB0ttov0DiNewNwIRt18jA8+o+u3dpjq+sW
T8KOEUt+zwvo/7V3LvSye0rgTBIlDHCNAymg4VMk7BPZ7hm/ELNKjD+Jo2FR3qyH
B5T0Y3HsLuJvW5iB4YlcNHlsdu87kGJ55tukmi8mxdAQ4Q7e2RCOFvu396j3x+UC
B5iPNgiV5+I3lg02dZ77DnKxHZu8A/lJBdiB3QW0KtZB6awBdpUKD9jf1b0SHzUv
KBds0pjBqAlkd25HN7rOrFleaJ1/ctaJxQZBKT5ZPt0m9STJEadao0xAH0ahmbWn
OlFuhjuefXKnEgV4We0+UXgVCwOPjdAvBbI+e0ocS3MFEvzG6uBQE3xDk3SzynTn
jh8BCNAw1FtxNrQHusEwMFxIt4I7mKZ9YIqioymCzLq9gwQbooMDQaHWBfEbwrbw
qHyGO0aoSCqI3Haadr8faqU9GY/rOPNk3sgrDQoo//fb4hVC1CLQJ13hef4Y53CI
rU7m2Ys6xt0nUW7/vGT1M0NPAgMBAAGjQjBAMA4GA1UdDwEB/wQEAwIBBjAPBgNV
HRMBAf8EBTADAQH/MB0GA1UdDgQWBBR5tFnme7bl5AFzgAiIyBpY9umbbjANBgkq
hkiG9w0BAQsFAAOCAgEAVR9YqbyyqFDQDLHYGmkgJykIrGF1XIpu+ILlaS/V9lZL
ubhzEFnTIZd+50xx+7LSYK05qAvqFyFWhfFQDlnrzuBZ6brJFe+GnY+EgPbk6ZGQ
3BebYhtF8GaV0nxvwuo77x/Py9auJ/GpsMiu/X1+mvoiBOv/2X/qkSsisRcOj/KK
NFtY2PwByVS5uCbMiogziUwthDyC3+6WVwW6LLv3xLfHTjuCvjHIInNzktHCgKQ5
ORAzI4JMPJ+GslWYHb4phowim57iaztXOoJwTdwJx4nLCgdNbOhdjsnvzqvHu7Ur
TkXWStAmzOVyyghqpZXjFaH3pO3JLF+l+/+sKAIuvtd7u+Nxe5AW0wdeRlN8NwdC
jNPElpzVmbUq4JUagEiuTDkHzsxHpFKVK7q4+63SM1N95R1NbdWhscdCb+ZAJzVc
oyi3B43njTOQ5yOf+1CceWxG1bQVs5ZufpsMljq4Ui0/1lvh+wjChP4kqKOJ2qxq
4RgqsahDYVvTH9w7jXbyLeiNdd8XM2w9U/t7y0Ff/9yi0GE44Za4rF2LN9d11TPA
mRGunUHBcnWEvgJBQl9nJEiU0Zsnvgc/ubhPgXRR4Xq37Z0j4r7g1SgEEzwxA57d
emyPxgcYxn/eR44/KJ4EBs+lVDR3veyJm+kXQ99b21/+jh5Xos1AnX5iItreGCc=
-----END CERTIFICATE-----
)PEM";

char deviceUuid[37];
uint32_t lastReadingAt = 0;

// The fleet prefix (24 characters, "xxxxxxxx-xxxx-xxxx-xxxx-") + the MAC (12 hex digits).
const char* makeUuid() {
  uint8_t mac[6];
  WiFi.macAddress(mac);
  snprintf(deviceUuid, sizeof(deviceUuid), "%.24s%02x%02x%02x%02x%02x%02x", DEVICE_UUID_PREFIX, mac[0],
           mac[1], mac[2], mac[3], mac[4], mac[5]);
  return deviceUuid;
}

SMServerConfig makeConfig() {
  SMServerConfig config;
  config.serverUrl = SERVER_URL;
  config.uuid = deviceUuid;  // filled in by setup() before begin()
  config.registrationSecret = REGISTRATION_SECRET;
  config.kind = smserver::kMaster;
  config.httpsCaCert = ISRG_ROOT_X1;
  config.mqttTls = true;
  config.mqttCaCert = ISRG_ROOT_X1;  // the same pointer: parsed once, shared
  return config;
}

SMServer device(makeConfig());
bool configured = false;

void setup() {
  Serial.begin(115200);
  Serial.println();
  if (!SECRETS_PRESENT) {
    Serial.println("SecureFleet: no secrets.h. Copy secrets.h.example to secrets.h, fill it in, flash again.");
    return;
  }
  WiFi.mode(WIFI_STA);
  WiFi.begin(WIFI_SSID, WIFI_PASSWORD);
  Serial.printf("device uuid %s\n", makeUuid());
  configured = device.begin();  // loop() waits for WiFi, then for NTP, by itself
}

void loop() {
  if (!configured) return;
  device.loop();

  smserver::Message message;
  while (device.pop(message)) {
    Serial.printf("message on %s: %s\n", message.topic, message.payload);
  }

  if (device.connected() && millis() - lastReadingAt >= 60000) {
    lastReadingAt = millis();
    JsonDocument reading;
    reading["uptime_s"] = millis() / 1000;
    reading["rssi"] = WiFi.RSSI();
    reading["heap"] = ESP.getFreeHeap();
    reading["heap_block"] = ESP.getMaxFreeBlockSize();
    device.publishData(reading);
  }
}
