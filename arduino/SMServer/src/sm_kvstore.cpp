/*
 * sm_kvstore.cpp - the EEPROM key-value store (format in sm_kvstore.h).
 */
#include "sm_kvstore.h"

#include <string.h>

namespace smserver {
namespace {

const uint8_t kMagic[4] = {'S', 'M', 'K', 'V'};
const uint8_t kVersion = 1;

}  // namespace

uint32_t crc32Update(uint32_t crc, uint8_t byte) {
  crc ^= byte;
  for (int bit = 0; bit < 8; ++bit) {
    crc = (crc >> 1) ^ (0xEDB88320u & (0u - (crc & 1u)));
  }
  return crc;
}

EepromKeyValueStore::EepromKeyValueStore(ByteStorage& storage, size_t offset,
                                         size_t length)
    : storage_(storage), offset_(offset), length_(0) {
  size_t total = storage.size();
  if (offset < total) length_ = (total - offset < length) ? total - offset : length;
}

uint32_t EepromKeyValueStore::payloadCrc(size_t length) {
  uint32_t crc = 0xFFFFFFFFu;
  for (size_t i = 0; i < length; ++i) crc = crc32Update(crc, at(kHeaderSize + i));
  return crc ^ 0xFFFFFFFFu;
}

size_t EepromKeyValueStore::payloadLength() {
  return static_cast<size_t>(at(5)) | (static_cast<size_t>(at(6)) << 8);
}

bool EepromKeyValueStore::valid() {
  if (length_ < kHeaderSize) return false;
  for (size_t i = 0; i < 4; ++i) {
    if (at(i) != kMagic[i]) return false;
  }
  if (at(4) != kVersion) return false;
  size_t length = payloadLength();
  if (length > length_ - kHeaderSize) return false;
  uint32_t stored = 0;
  for (int i = 3; i >= 0; --i) stored = (stored << 8) | at(7 + i);
  if (stored != payloadCrc(length)) return false;
  // The records must tile the payload exactly.
  size_t pos = 0;
  while (pos < length) {
    size_t keyLength = at(kHeaderSize + pos);
    if (pos + 1 + keyLength + 2 > length) return false;
    size_t v = kHeaderSize + pos + 1 + keyLength;
    size_t valueLength = static_cast<size_t>(at(v)) | (static_cast<size_t>(at(v + 1)) << 8);
    pos += 1 + keyLength + 2 + valueLength;
  }
  return pos == length;
}

void EepromKeyValueStore::writeHeader(size_t length) {
  for (size_t i = 0; i < 4; ++i) set(i, kMagic[i]);
  set(4, kVersion);
  set(5, static_cast<uint8_t>(length & 0xFF));
  set(6, static_cast<uint8_t>(length >> 8));
  uint32_t crc = payloadCrc(length);
  for (size_t i = 0; i < 4; ++i) set(7 + i, static_cast<uint8_t>(crc >> (8 * i)));
}

bool EepromKeyValueStore::find(const char* key, size_t* recordStart, size_t* recordSize) {
  size_t keyLength = strlen(key);
  size_t length = payloadLength();
  size_t pos = 0;
  while (pos < length) {
    size_t base = kHeaderSize + pos;
    size_t thisKeyLength = at(base);
    size_t v = base + 1 + thisKeyLength;
    size_t valueLength = static_cast<size_t>(at(v)) | (static_cast<size_t>(at(v + 1)) << 8);
    size_t size = 1 + thisKeyLength + 2 + valueLength;
    if (thisKeyLength == keyLength) {
      bool same = true;
      for (size_t i = 0; i < keyLength && same; ++i) {
        same = at(base + 1 + i) == static_cast<uint8_t>(key[i]);
      }
      if (same) {
        *recordStart = pos;
        *recordSize = size;
        return true;
      }
    }
    pos += size;
  }
  return false;
}

bool EepromKeyValueStore::get(const char* key, char* out, size_t outSize) {
  if (key == NULL || out == NULL || outSize == 0) return false;
  out[0] = '\0';
  if (!valid()) return false;
  size_t start, size;
  if (!find(key, &start, &size)) return false;
  size_t v = kHeaderSize + start + 1 + at(kHeaderSize + start);
  size_t valueLength = static_cast<size_t>(at(v)) | (static_cast<size_t>(at(v + 1)) << 8);
  if (valueLength + 1 > outSize) return false;
  for (size_t i = 0; i < valueLength; ++i) out[i] = static_cast<char>(at(v + 2 + i));
  out[valueLength] = '\0';
  return true;
}

bool EepromKeyValueStore::put(const char* key, const char* value) {
  if (key == NULL || value == NULL) return false;
  size_t keyLength = strlen(key);
  size_t valueLength = strlen(value);
  if (keyLength == 0 || keyLength > 255 || valueLength > 0xFFFF) return false;
  if (!valid() && !clear()) return false;

  size_t start, size;
  size_t length = payloadLength();
  bool exists = find(key, &start, &size);
  if (exists && size == 1 + keyLength + 2 + valueLength) {
    size_t v = kHeaderSize + start + 1 + keyLength + 2;
    bool same = true;
    for (size_t i = 0; i < valueLength && same; ++i) {
      same = at(v + i) == static_cast<uint8_t>(value[i]);
    }
    if (same) return true;  // unchanged: spare the flash a write
  }
  size_t remaining = exists ? length - size : length;
  size_t newLength = remaining + 1 + keyLength + 2 + valueLength;
  if (newLength > length_ - kHeaderSize || newLength > 0xFFFF) return false;

  if (exists) {
    // Close the gap left by the old record, then append the new one.
    for (size_t i = start; i < remaining; ++i) {
      set(kHeaderSize + i, at(kHeaderSize + i + size));
    }
  }
  size_t pos = kHeaderSize + remaining;
  set(pos++, static_cast<uint8_t>(keyLength));
  for (size_t i = 0; i < keyLength; ++i) set(pos++, static_cast<uint8_t>(key[i]));
  set(pos++, static_cast<uint8_t>(valueLength & 0xFF));
  set(pos++, static_cast<uint8_t>(valueLength >> 8));
  for (size_t i = 0; i < valueLength; ++i) set(pos++, static_cast<uint8_t>(value[i]));
  writeHeader(newLength);
  return storage_.commit();
}

bool EepromKeyValueStore::remove(const char* key) {
  if (key == NULL || !valid()) return true;  // nothing stored, nothing to remove
  size_t start, size;
  if (!find(key, &start, &size)) return true;
  size_t length = payloadLength();
  for (size_t i = start; i + size < length; ++i) {
    set(kHeaderSize + i, at(kHeaderSize + i + size));
  }
  writeHeader(length - size);
  return storage_.commit();
}

bool EepromKeyValueStore::clear() {
  if (length_ < kHeaderSize) return false;
  writeHeader(0);
  return storage_.commit();
}

}  // namespace smserver
