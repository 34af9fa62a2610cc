/* convert.h - JSON text <-> Lua values, for events and grwhd.json. */
#ifndef GRWHD_CONVERT_H
#define GRWHD_CONVERT_H

#include <stddef.h>

#include <lua.h>

/* Deeper documents or tables are refused (and cycles caught). */
#define GRWHD_CONVERT_DEPTH_MAX 128

/* Registry key of the metatable that marks a decoded JSON array. */
#define GRWHD_ARRAY_MT "grwhd.array"

/* Creates the array metatable; call once per state. */
void convert_init(lua_State *L);

/*
 * Pushes the value of the JSON text s[0..len).  Objects become tables,
 * arrays tables with the array metatable, null the light userdata NULL
 * (grwhd.null), integers that fit lua_Integer integers.  On bad input
 * raises a Lua error naming the byte offset.
 */
void convert_decode(lua_State *L, const char *s, size_t len);

/*
 * Pushes the JSON text of the value at idx as a string, object members in
 * byte order of their names.  A table is an array when it came from a
 * decoded array (its other keys are then left out) or its keys are
 * exactly 1..n; otherwise an object, integer keys written as strings.
 * Bytes that are not UTF-8 become U+FFFD.  Raises on values JSON cannot
 * hold (functions, userdata, NaN, infinities, other key types, cycles).
 */
void convert_encode(lua_State *L, int idx);

#endif
