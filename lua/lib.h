/* lib.h - the grwhd module that scripts see. */
#ifndef GRWHD_LIB_H
#define GRWHD_LIB_H

#include <lua.h>

/* lua_CFunction for luaL_requiref: pushes the module table. */
int lib_open(lua_State *L);

/*
 * Lua's print for scripts: its arguments through tostring, joined by
 * tabs, as one info line of the log with the event's ids.
 */
int lib_print(lua_State *L);

#endif
