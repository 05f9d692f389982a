/*
 * Arduino.h (stub) - declarations only, shaped like the ESP8266 Arduino core
 * 3.1.2, so `make compile-check` can type-check sm_arduino.cpp and the example
 * sketches on the host. Nothing here is linked or run; the real compile is
 * ../../shared/tools/esp8266 (see the library README).
 */
#ifndef STUB_ARDUINO_H
#define STUB_ARDUINO_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include <functional>

#include "pgmspace.h"

typedef bool boolean;
typedef uint8_t byte;

#define HIGH 1
#define LOW 0
#define OUTPUT 1
#define LED_BUILTIN 2

unsigned long millis();
void delay(unsigned long ms);
void pinMode(uint8_t pin, uint8_t mode);
void digitalWrite(uint8_t pin, uint8_t value);
void configTime(int timezone_sec, int daylightOffset_sec, const char* server1,
                const char* server2 = nullptr, const char* server3 = nullptr);

class String {
 public:
  String(const char* text = "");
  String(const String& other);
  String& operator=(const String& other);
  ~String();
  unsigned int length() const;
  const char* c_str() const;
};

class Print {
 public:
  virtual ~Print() {}
  virtual size_t write(uint8_t c) = 0;
  virtual size_t write(const uint8_t* buffer, size_t size);
  size_t println(const char* text);
  size_t println();
  size_t printf(const char* format, ...) __attribute__((format(printf, 2, 3)));
};

class Stream : public Print {
 public:
  virtual int available() = 0;
  virtual int read() = 0;
  virtual int peek() = 0;
  void setTimeout(unsigned long timeout);  // not virtual, as in the core
  unsigned long getTimeout() const;
  virtual size_t readBytes(char* buffer, size_t length);
};

class HardwareSerial : public Stream {
 public:
  void begin(unsigned long baud);
  size_t write(uint8_t c) override;
  int available() override;
  int read() override;
  int peek() override;
};
extern HardwareSerial Serial;

class IPAddress {
 public:
  IPAddress();
  String toString() const;
};

class Client : public Stream {
 public:
  virtual int connect(IPAddress ip, uint16_t port) = 0;
  virtual int connect(const char* host, uint16_t port) = 0;
  size_t write(uint8_t c) override = 0;
  size_t write(const uint8_t* buffer, size_t size) override = 0;
  virtual int read(uint8_t* buffer, size_t size) = 0;
  int read() override = 0;
  virtual void flush() = 0;
  virtual void stop() = 0;
  virtual uint8_t connected() = 0;
};

class EspClass {
 public:
  uint32_t getFreeHeap();
  uint32_t getMaxFreeBlockSize();
};
extern EspClass ESP;

#endif
