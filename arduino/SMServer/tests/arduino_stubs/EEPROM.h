/* EEPROM.h (stub) - see Arduino.h (stub). */
#ifndef STUB_EEPROM_H
#define STUB_EEPROM_H

#include "Arduino.h"

class EEPROMClass {
 public:
  void begin(size_t size);
  uint8_t read(int const address);
  void write(int const address, uint8_t const val);
  bool commit();
  bool end();
  size_t length();
};
extern EEPROMClass EEPROM;

#endif
