/*
 * sm_json.h - reads one string field of a small flat JSON object.
 *
 * The server's answers are tiny ({"c":"OK","t":"..."}, {"c":"OK","ip":"..."},
 * {"c":"PING","src":"server"}), so the core reads them with this scanner
 * instead of pulling ArduinoJson into the host-tested code. It walks the whole
 * object (nested values are skipped, not searched), so a key inside a nested
 * object never matches a top-level lookup.
 */
#ifndef SMSERVER_JSON_H
#define SMSERVER_JSON_H

#include <stddef.h>

namespace smserver {

/**
 * Finds the top-level member `key` of the JSON object in `json` (length
 * `length`, need not be NUL-terminated) and copies its string value, unescaped
 * and NUL-terminated, into `out`. False when the text is not an object, the
 * key is absent, its value is not a string, or the value does not fit.
 * `out` may be `json` itself: unescaping only shrinks, so every write lands
 * behind the byte being read (the client extracts its token in place).
 */
bool jsonGetString(const char* json, size_t length, const char* key, char* out,
                   size_t outSize);

/** Same, for a NUL-terminated `json`. */
bool jsonGetString(const char* json, const char* key, char* out, size_t outSize);

}  // namespace smserver

#endif  // SMSERVER_JSON_H
