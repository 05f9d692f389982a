/*
 * sm_http.cpp - URL parsing, request head and a bounded HTTP/1.x answer
 * reader (see sm_http.h). Every index is checked against its buffer; nothing
 * here allocates.
 */
#include "sm_http.h"

#include <stdio.h>
#include <string.h>

namespace smserver {
namespace {

char lower(char c) { return (c >= 'A' && c <= 'Z') ? static_cast<char>(c - 'A' + 'a') : c; }

bool startsWithNoCase(const char* text, const char* prefix) {
  for (; *prefix; ++text, ++prefix) {
    if (lower(*text) != *prefix) return false;
  }
  return true;
}

bool equalsNoCase(const char* a, size_t aLength, const char* b) {
  size_t bLength = strlen(b);
  if (aLength != bLength) return false;
  for (size_t i = 0; i < aLength; ++i) {
    if (lower(a[i]) != lower(b[i])) return false;
  }
  return true;
}

bool isSpace(char c) { return c == ' ' || c == '\t'; }

// Reads an unsigned decimal of at most `maxDigits` digits spanning text[0, length).
bool parseDecimal(const char* text, size_t length, size_t maxDigits, uint32_t* out) {
  if (length == 0 || length > maxDigits) return false;
  uint32_t value = 0;
  for (size_t i = 0; i < length; ++i) {
    if (text[i] < '0' || text[i] > '9') return false;
    value = value * 10 + static_cast<uint32_t>(text[i] - '0');
  }
  *out = value;
  return true;
}

int hexDigit(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  c = lower(c);
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  return -1;
}

}  // namespace

const char kRequestEnd[] = "\r\n\r\n";

bool parseServerUrl(const char* url, ServerUrl& out) {
  if (url == NULL) return false;
  const char* p;
  if (startsWithNoCase(url, "https://")) {
    out.tls = true;
    out.port = 443;
    p = url + 8;
  } else if (startsWithNoCase(url, "http://")) {
    out.tls = false;
    out.port = 80;
    p = url + 7;
  } else {
    return false;
  }
  const char* authorityEnd = p + strcspn(p, "/");
  for (const char* q = p; q < authorityEnd; ++q) {
    if (*q == '@' || *q == '?' || *q == '#' || isSpace(*q)) return false;
  }
  const char* host = p;
  const char* hostEnd;
  const char* rest;
  if (*p == '[') {
    const char* close = static_cast<const char*>(memchr(p, ']', static_cast<size_t>(authorityEnd - p)));
    if (close == NULL) return false;
    host = p + 1;
    hostEnd = close;
    rest = close + 1;
  } else {
    const char* colon = static_cast<const char*>(memchr(p, ':', static_cast<size_t>(authorityEnd - p)));
    hostEnd = colon ? colon : authorityEnd;
    rest = hostEnd;
  }
  size_t hostLength = static_cast<size_t>(hostEnd - host);
  if (hostLength == 0 || hostLength >= sizeof(out.host)) return false;
  if (rest < authorityEnd) {
    if (*rest != ':') return false;
    uint32_t port;
    if (!parseDecimal(rest + 1, static_cast<size_t>(authorityEnd - rest - 1), 5, &port) ||
        port == 0 || port > 65535) {
      return false;
    }
    out.port = static_cast<uint16_t>(port);
  }
  memcpy(out.host, host, hostLength);
  out.host[hostLength] = '\0';
  const char* path = authorityEnd;
  if (strpbrk(path, "?# \t\r\n") != NULL) return false;
  size_t pathLength = strlen(path);
  while (pathLength > 0 && path[pathLength - 1] == '/') --pathLength;
  out.base = path;
  out.baseLength = pathLength;
  return true;
}

size_t formatRequestHead(const ServerUrl& url, const char* path, char* out, size_t outSize) {
  if (path == NULL || path[0] != '/' || out == NULL || outSize == 0) return 0;
  bool v6 = strchr(url.host, ':') != NULL;
  char port[8] = "";
  if (url.port != (url.tls ? 443 : 80)) snprintf(port, sizeof(port), SM_PSTR(":%u"), static_cast<unsigned>(url.port));
  int n = snprintf(out, outSize,
                   SM_PSTR("GET %.*s%s HTTP/1.1\r\n"
                           "Host: %s%s%s%s\r\n"
                           "User-Agent: SMServer/" SMSERVER_VERSION "\r\n"
                           "Connection: close\r\n"
                           "Authorization: Bearer "),
                   static_cast<int>(url.baseLength), url.base, path, v6 ? "[" : "", url.host,
                   v6 ? "]" : "", port);
  if (n <= 0 || static_cast<size_t>(n) >= outSize) {
    out[0] = '\0';
    return 0;
  }
  return static_cast<size_t>(n);
}

const char* httpErrorName(int code) {
  switch (code) {
    case kHttpErrorDns: return SM_PSTR("DNS lookup failed");
    case kHttpErrorConnect: return SM_PSTR("TCP connect failed");
    case kHttpErrorTls: return SM_PSTR("TLS handshake failed");
    case kHttpErrorTimeout: return SM_PSTR("no answer in time");
    case kHttpErrorProtocol: return SM_PSTR("not an HTTP answer");
    case kHttpErrorMemory: return SM_PSTR("not enough memory");
    default: return SM_PSTR("network error");
  }
}

// ------------------------------------------------------ HttpResponseParser

HttpResponseParser::HttpResponseParser(char* body, size_t bodySize)
    : body_(body),
      bodySize_(bodySize),
      bodyLength_(0),
      state_(kStatusLine),
      status_(0),
      retryAfter_(-1),
      truncated_(false),
      chunked_(false),
      haveLength_(false),
      contentLength_(0),
      remaining_(0),
      headerBytes_(0),
      lineLength_(0),
      lineOverflow_(false) {
  if (body_ == NULL || bodySize_ == 0) {
    fail();
    return;
  }
  body_[0] = '\0';
  line_[0] = '\0';
}

bool HttpResponseParser::lineByte(char c) {
  if (++headerBytes_ > kMaxHeaderBytes) {
    fail();
    return false;
  }
  if (c == '\n') {
    if (lineLength_ > 0 && line_[lineLength_ - 1] == '\r' && !lineOverflow_) --lineLength_;
    line_[lineLength_] = '\0';
    return true;
  }
  if (lineLength_ + 1 < kLineSize) {
    line_[lineLength_++] = c;
  } else {
    lineOverflow_ = true;  // keep the first 127 bytes; nothing we read is longer
  }
  return false;
}

size_t HttpResponseParser::feed(const char* data, size_t length) {
  size_t i = 0;
  while (i < length && !done()) {
    switch (state_) {
      case kBodyLength:
      case kChunkData: {
        size_t n = length - i;
        if (n > remaining_) n = remaining_;
        bodyBytes(data + i, n);
        i += n;
        remaining_ -= static_cast<uint32_t>(n);
        if (remaining_ == 0 && !done()) {
          if (state_ == kBodyLength) {
            finish();
          } else {
            state_ = kChunkDataEnd;
          }
        }
        break;
      }
      case kBodyUntilClose:
        bodyBytes(data + i, length - i);
        i = length;
        break;
      default:
        if (lineByte(data[i++])) {
          onLine();
          lineLength_ = 0;
          lineOverflow_ = false;
        }
        break;
    }
  }
  return i;
}

void HttpResponseParser::closed() {
  if (state_ == kBodyUntilClose) {
    finish();
  } else if (!done()) {
    fail();  // the answer ended before it was whole
  }
}

void HttpResponseParser::onLine() {
  switch (state_) {
    case kStatusLine: onStatusLine(); break;
    case kHeaders: onHeaderLine(); break;
    case kChunkSize: onChunkSizeLine(); break;
    case kChunkDataEnd:
      if (lineLength_ != 0) {
        fail();
      } else {
        state_ = kChunkSize;
      }
      break;
    case kTrailers:
      if (lineLength_ == 0) finish();
      break;
    default: break;
  }
}

void HttpResponseParser::onStatusLine() {
  // "HTTP/1.1 200 OK": the version, one space, three digits, then a space or the end.
  uint32_t code;
  if (lineLength_ < 12 || strncmp(line_, "HTTP/1.", 7) != 0 || line_[7] < '0' || line_[7] > '9' ||
      line_[8] != ' ' || !parseDecimal(line_ + 9, 3, 3, &code) ||
      (lineLength_ > 12 && line_[12] != ' ') || code < 100 || code > 599 || code == 101) {
    fail();
    return;
  }
  status_ = static_cast<int>(code);
  state_ = kHeaders;
}

void HttpResponseParser::onHeaderLine() {
  if (lineLength_ == 0 && !lineOverflow_) {
    onHeadersEnd();
    return;
  }
  if (isSpace(line_[0])) return;  // obsolete line folding: nothing we read uses it
  const char* colon = static_cast<const char*>(memchr(line_, ':', lineLength_));
  if (colon == NULL) return;
  size_t nameLength = static_cast<size_t>(colon - line_);
  const char* value = colon + 1;
  const char* end = line_ + lineLength_;
  while (value < end && isSpace(*value)) ++value;
  while (end > value && isSpace(end[-1])) --end;
  size_t valueLength = static_cast<size_t>(end - value);

  if (equalsNoCase(line_, nameLength, "content-length")) {
    uint32_t length;
    if (lineOverflow_ || !parseDecimal(value, valueLength, 9, &length) ||
        (haveLength_ && length != contentLength_)) {
      fail();  // an unreadable or contradictory length: do not guess where the body ends
      return;
    }
    haveLength_ = true;
    contentLength_ = length;
  } else if (equalsNoCase(line_, nameLength, "transfer-encoding")) {
    // Only "chunked" (as the last coding) can be decoded here.
    if (lineOverflow_ || valueLength < 7 || !equalsNoCase(end - 7, 7, "chunked") ||
        (valueLength > 7 && end[-8] != ' ' && end[-8] != ',')) {
      fail();
      return;
    }
    chunked_ = true;
  } else if (equalsNoCase(line_, nameLength, "retry-after")) {
    uint32_t seconds;
    retryAfter_ = (!lineOverflow_ && parseDecimal(value, valueLength, 8, &seconds))
                      ? static_cast<long>(seconds)
                      : -1;  // an HTTP-date (or garbage): the caller backs off instead
  }
}

void HttpResponseParser::onHeadersEnd() {
  if (status_ < 200) {  // 1xx: an interim answer; the real one follows
    status_ = 0;
    chunked_ = haveLength_ = false;
    retryAfter_ = -1;
    state_ = kStatusLine;
    return;
  }
  if (status_ == 204 || status_ == 304) {
    finish();
  } else if (chunked_) {
    state_ = kChunkSize;
  } else if (haveLength_) {
    if (contentLength_ > bodySize_ - 1) {
      truncated_ = true;  // known to be too long: do not read it at all
      finish();
    } else if (contentLength_ == 0) {
      finish();
    } else {
      remaining_ = contentLength_;
      state_ = kBodyLength;
    }
  } else {
    state_ = kBodyUntilClose;
  }
}

void HttpResponseParser::onChunkSizeLine() {
  uint32_t size = 0;
  size_t i = 0;
  for (; i < lineLength_; ++i) {
    int digit = hexDigit(line_[i]);
    if (digit < 0) break;
    if (size > 0x07FFFFFFu) {
      fail();
      return;
    }
    size = size * 16 + static_cast<uint32_t>(digit);
  }
  if (i == 0 || (i < lineLength_ && line_[i] != ';' && !isSpace(line_[i]))) {
    fail();
    return;
  }
  if (size == 0) {
    state_ = kTrailers;
  } else if (size > bodySize_ - 1 - bodyLength_) {
    bodyBytes(NULL, size);  // cannot fit: truncated, stop here
  } else {
    remaining_ = size;
    state_ = kChunkData;
  }
}

void HttpResponseParser::bodyBytes(const char* data, size_t length) {
  if (length > bodySize_ - 1 - bodyLength_) {
    truncated_ = true;
    bodyLength_ = 0;
    body_[0] = '\0';
    finish();
    return;
  }
  memcpy(body_ + bodyLength_, data, length);
  bodyLength_ += length;
  body_[bodyLength_] = '\0';
}

}  // namespace smserver
