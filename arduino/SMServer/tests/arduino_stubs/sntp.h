/* sntp.h (stub) - lwIP's SNTP, see Arduino.h (stub). */
#ifndef STUB_SNTP_H
#define STUB_SNTP_H

#include <stdint.h>

extern "C" uint8_t sntp_enabled(void);

#endif
