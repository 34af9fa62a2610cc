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
 * Pushes the JSON text of the value at idx as a string.  Raises on values
 * JSON cannot hold (functions, NaN, mixed keys, cycles).
 */
void convert_encode(lua_State *L, int idx);

#endif
