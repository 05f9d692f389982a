/* stdio.h (xtensa shim) - see string.h beside it. */
#ifndef SMSERVER_XTENSA_STDIO_H
#define SMSERVER_XTENSA_STDIO_H

#include <stdarg.h>
#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

int snprintf(char* __restrict out, size_t size, const char* __restrict format, ...)
    __attribute__((format(printf, 3, 4)));
int vsnprintf(char* __restrict out, size_t size, const char* __restrict format, va_list args)
    __attribute__((format(printf, 3, 0)));

#ifdef __cplusplus
}
#endif

#endif
