/* dedupe.h - the key that recognises a delivery GetResponse repeats. */
#ifndef GRWHD_DEDUPE_H
#define GRWHD_DEDUPE_H

#include <stddef.h>

#include "spool.h"

/*
 * Fills out with the event's delivery key: from X-Webhook-ID and the
 * event's place in the batch when the header came (it stays the same
 * across GetResponse's retries), else from the event's JSON text.
 * Returns 0, or -1 when hashing failed.
 */
int dedupe_key(const char *webhook_id, int batch_index, const char *json,
               size_t len, unsigned char out[GRWHD_DEDUPE_KEY]);

#endif
