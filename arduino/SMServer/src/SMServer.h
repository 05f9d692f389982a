/*
 * SMServer.h - the library's main header: include this in a sketch.
 *
 * The portable core (sm_client.h, sm_kvstore.h, sm_json.h) builds anywhere;
 * the ESP8266 adapters and the SMServer class (sm_arduino.h) come with it on
 * ESP8266 Arduino builds. See examples/ and the project README.
 */
#ifndef SMSERVER_H
#define SMSERVER_H

#include "sm_client.h"
#include "sm_json.h"
#include "sm_kvstore.h"

#if defined(ARDUINO) && defined(ESP8266)
#include "sm_arduino.h"
#endif

#endif  // SMSERVER_H
