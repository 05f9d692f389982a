/*
 * string.h (xtensa shim) - Debian's gcc-xtensa-lx106 ships a compiler but
 * no C library headers. `make xtensa` compiles the portable core for the
 * ESP8266's CPU (32-bit int and size_t, strict alignment) with these
 * declarations, which follow newlib's prototypes; nothing is linked.
 */
#ifndef SMSERVER_XTENSA_STRING_H
#define SMSERVER_XTENSA_STRING_H

#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

void* memchr(const void* s, int c, size_t n);
int memcmp(const void* a, const void* b, size_t n);
void* memcpy(void* __restrict dest, const void* __restrict src, size_t n);
void* memmove(void* dest, const void* src, size_t n);
void* memset(void* s, int c, size_t n);
char* strchr(const char* s, int c);
int strcmp(const char* a, const char* b);
char* strcpy(char* __restrict dest, const char* __restrict src);
size_t strcspn(const char* s, const char* reject);
size_t strlen(const char* s);
int strncmp(const char* a, const char* b, size_t n);
char* strpbrk(const char* s, const char* accept);
char* strrchr(const char* s, int c);

#ifdef __cplusplus
}
#endif

#endif
