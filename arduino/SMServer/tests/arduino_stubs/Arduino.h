/*
 * Arduino.h (stub) - declarations only, shaped like the ESP8266 Arduino core
 * 3.x, so `make compile-check` can type-check sm_arduino.cpp and the example
 * sketches on the host. Nothing here is linked or run.
 */
#ifndef STUB_ARDUINO_H
#define STUB_ARDUINO_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <functional>

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

class String {
 public:
  String(const char* text = "");
  String(const String& other);
  String& operator=(const String& other);
  ~String();
  unsigned int length() const;
  const char* c_str() const;
  bool startsWith(const String& prefix) const;
  bool endsWith(const String& suffix) const;
  void remove(unsigned int index);
  char operator[](unsigned int index) const;
  String& operator+=(const char* text);
};
String operator+(const String& a, const char* b);
String operator+(const String& a, const String& b);

class Print {
 public:
  virtual ~Print() {}
  virtual size_t write(uint8_t c) = 0;
  size_t println(const char* text);
  size_t printf(const char* format, ...) __attribute__((format(printf, 2, 3)));
};

class HardwareSerial : public Print {
 public:
  void begin(unsigned long baud);
  size_t write(uint8_t c);
};
extern HardwareSerial Serial;

class IPAddress {
 public:
  String toString() const;
};

class Client : public Print {};

#endif
