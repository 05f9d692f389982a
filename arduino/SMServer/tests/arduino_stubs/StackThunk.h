/* StackThunk.h (stub) - see Arduino.h (stub). */
#ifndef STUB_STACKTHUNK_H
#define STUB_STACKTHUNK_H

#include <stdint.h>

extern "C" uint32_t stack_thunk_get_refcnt();

#endif
