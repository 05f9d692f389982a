/*
 * sm_json.cpp - a bounded JSON object scanner (see sm_json.h).
 *
 * Every read is checked against the end pointer, and nesting is limited, so
 * a hostile or truncated payload cannot read past the buffer or overflow the
 * stack.
 */
#include "sm_json.h"

#include <string.h>

namespace smserver {
namespace {

const int kMaxDepth = 16;

struct Cursor {
  const char* p;
  const char* end;
};

void skipSpace(Cursor& c) {
  while (c.p < c.end && (*c.p == ' ' || *c.p == '\t' || *c.p == '\n' || *c.p == '\r')) {
    ++c.p;
  }
}

int hexValue(char ch) {
  if (ch >= '0' && ch <= '9') return ch - '0';
  if (ch >= 'a' && ch <= 'f') return ch - 'a' + 10;
  if (ch >= 'A' && ch <= 'F') return ch - 'A' + 10;
  return -1;
}

// Appends one byte to out; `fits` turns false (and stays false) on overflow.
void put(char* out, size_t outSize, size_t& n, bool& fits, char ch) {
  if (out == NULL) return;
  if (n + 1 < outSize) {
    out[n++] = ch;
  } else {
    fits = false;
  }
}

// Reads a string starting at its opening quote. With out == NULL it only
// skips. Returns false on malformed input; `fits` reports truncation.
bool readString(Cursor& c, char* out, size_t outSize, bool& fits) {
  size_t n = 0;
  fits = true;
  if (c.p >= c.end || *c.p != '"') return false;
  ++c.p;
  while (c.p < c.end) {
    char ch = *c.p++;
    if (ch == '"') {
      if (out != NULL && outSize > 0) out[n] = '\0';
      return true;
    }
    if (static_cast<unsigned char>(ch) < 0x20) return false;
    if (ch != '\\') {
      put(out, outSize, n, fits, ch);
      continue;
    }
    if (c.p >= c.end) return false;
    char esc = *c.p++;
    switch (esc) {
      case '"': put(out, outSize, n, fits, '"'); break;
      case '\\': put(out, outSize, n, fits, '\\'); break;
      case '/': put(out, outSize, n, fits, '/'); break;
      case 'b': put(out, outSize, n, fits, '\b'); break;
      case 'f': put(out, outSize, n, fits, '\f'); break;
      case 'n': put(out, outSize, n, fits, '\n'); break;
      case 'r': put(out, outSize, n, fits, '\r'); break;
      case 't': put(out, outSize, n, fits, '\t'); break;
      case 'u': {
        if (c.end - c.p < 4) return false;
        unsigned code = 0;
        for (int i = 0; i < 4; ++i) {
          int h = hexValue(c.p[i]);
          if (h < 0) return false;
          code = code * 16 + static_cast<unsigned>(h);
        }
        c.p += 4;
        // Encode the BMP code point as UTF-8; surrogate halves become '?'
        // (no field this library reads carries them).
        if (code >= 0xD800 && code <= 0xDFFF) {
          put(out, outSize, n, fits, '?');
        } else if (code < 0x80) {
          put(out, outSize, n, fits, static_cast<char>(code));
        } else if (code < 0x800) {
          put(out, outSize, n, fits, static_cast<char>(0xC0 | (code >> 6)));
          put(out, outSize, n, fits, static_cast<char>(0x80 | (code & 0x3F)));
        } else {
          put(out, outSize, n, fits, static_cast<char>(0xE0 | (code >> 12)));
          put(out, outSize, n, fits, static_cast<char>(0x80 | ((code >> 6) & 0x3F)));
          put(out, outSize, n, fits, static_cast<char>(0x80 | (code & 0x3F)));
        }
        break;
      }
      default:
        return false;
    }
  }
  return false;  // unterminated
}

bool skipValue(Cursor& c, int depth);

// Skips an object or array whose opening bracket is at c.p.
bool skipContainer(Cursor& c, int depth) {
  if (depth > kMaxDepth) return false;
  char close = (*c.p == '{') ? '}' : ']';
  bool isObject = (close == '}');
  ++c.p;
  skipSpace(c);
  if (c.p < c.end && *c.p == close) {
    ++c.p;
    return true;
  }
  while (c.p < c.end) {
    if (isObject) {
      bool fits;
      if (!readString(c, NULL, 0, fits)) return false;
      skipSpace(c);
      if (c.p >= c.end || *c.p != ':') return false;
      ++c.p;
    }
    if (!skipValue(c, depth + 1)) return false;
    skipSpace(c);
    if (c.p >= c.end) return false;
    if (*c.p == close) {
      ++c.p;
      return true;
    }
    if (*c.p != ',') return false;
    ++c.p;
    skipSpace(c);
  }
  return false;
}

// Skips any value: string, object, array, number or literal.
bool skipValue(Cursor& c, int depth) {
  skipSpace(c);
  if (c.p >= c.end) return false;
  char ch = *c.p;
  if (ch == '"') {
    bool fits;
    return readString(c, NULL, 0, fits);
  }
  if (ch == '{' || ch == '[') return skipContainer(c, depth);
  // Numbers and true/false/null: a run of their characters.
  const char* start = c.p;
  while (c.p < c.end && *c.p != '\0' && strchr("+-.0123456789eEtrufalsn", *c.p) != NULL) ++c.p;
  return c.p > start;
}

}  // namespace

bool jsonGetString(const char* json, size_t length, const char* key, char* out,
                   size_t outSize) {
  if (json == NULL || key == NULL || out == NULL || outSize == 0) return false;
  Cursor c = {json, json + length};
  skipSpace(c);
  if (c.p >= c.end || *c.p != '{') return false;
  ++c.p;
  skipSpace(c);
  char name[32];
  while (c.p < c.end && *c.p != '}') {
    bool nameFits;
    if (!readString(c, name, sizeof(name), nameFits)) return false;
    skipSpace(c);
    if (c.p >= c.end || *c.p != ':') return false;
    ++c.p;
    skipSpace(c);
    if (nameFits && strcmp(name, key) == 0) {
      if (c.p >= c.end || *c.p != '"') return false;
      bool valueFits;
      if (!readString(c, out, outSize, valueFits)) return false;
      if (!valueFits) out[0] = '\0';
      return valueFits;
    }
    if (!skipValue(c, 1)) return false;
    skipSpace(c);
    if (c.p < c.end && *c.p == ',') {
      ++c.p;
      skipSpace(c);
    } else if (c.p >= c.end || *c.p != '}') {
      return false;
    }
  }
  return false;
}

bool jsonGetString(const char* json, const char* key, char* out, size_t outSize) {
  if (json == NULL) return false;
  return jsonGetString(json, strlen(json), key, out, outSize);
}

}  // namespace smserver
