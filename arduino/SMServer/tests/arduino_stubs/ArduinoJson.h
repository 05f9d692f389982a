/*
 * ArduinoJson.h (stub) - the slice of the ArduinoJson 7 API that the library
 * and examples use (JsonDocument, operator[], operator|, (de)serializeJson,
 * measureJson); see Arduino.h (stub).
 */
#ifndef STUB_ARDUINOJSON_H
#define STUB_ARDUINOJSON_H

#include "Arduino.h"

class JsonVariant {
 public:
  JsonVariant& operator=(const char* value);
  JsonVariant& operator=(int value);
  JsonVariant& operator=(unsigned int value);
  JsonVariant& operator=(long value);
  JsonVariant& operator=(unsigned long value);
  JsonVariant& operator=(bool value);
  const char* operator|(const char* fallback) const;
  int operator|(int fallback) const;
  unsigned long operator|(unsigned long fallback) const;
  JsonVariant& operator=(const JsonVariant& other);
};

class JsonDocument {
 public:
  JsonDocument();
  JsonVariant operator[](const char* key);
};

class DeserializationError {
 public:
  explicit operator bool() const;
  const char* c_str() const;
};

DeserializationError deserializeJson(JsonDocument& doc, const char* input, size_t inputSize);
size_t serializeJson(const JsonDocument& doc, char* output, size_t size);
size_t measureJson(const JsonDocument& doc);

#endif
