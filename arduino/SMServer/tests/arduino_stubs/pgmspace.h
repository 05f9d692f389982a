/* pgmspace.h (stub) - flash-resident data on the ESP8266; see Arduino.h (stub). */
#ifndef STUB_PGMSPACE_H
#define STUB_PGMSPACE_H

#include <stddef.h>
#include <stdint.h>

#define PROGMEM
#define PSTR(s) (s)

uint8_t pgm_read_byte(const void* address);
char* strncpy_P(char* dest, const char* src, size_t size);

#endif
