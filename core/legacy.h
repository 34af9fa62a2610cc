/* legacy.h - GetResponse's older GET callbacks in the webhook shape. */
#ifndef GRWHD_LEGACY_H
#define GRWHD_LEGACY_H

#include <stddef.h>

struct legacy_param {
    const char *key;
    const char *value;
};

/*
 * Builds the JSON text of one webhook-shaped event from a callback's query
 * parameters (n of them; the one named secret_param is left out):
 * subscribe, open, click and unsubscribe become contact_added,
 * contact_opened_message, contact_clicked_message_link and
 * contact_removed_link, any other action callback_<action>.  contact,
 * message, clickTrack and account are filled from the parameters present,
 * event.occurredAt is now, and callback holds every parameter as sent.
 * Returns malloc'd text, or NULL when there is no action parameter.
 */
char *legacy_event(const struct legacy_param *p, size_t n,
                   const char *secret_param, double now);

#endif
