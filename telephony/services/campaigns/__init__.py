"""Outbound campaigns: what the API manages, and the dispatcher that dials them.

The dispatcher claims due contacts, paces and caps the dials, and reconciles the
outcomes. Any number of dispatchers (threads, processes, machines) cooperate through
the database only. An attempt at one contact goes through three chapters, each told
in its module's docstring:

  claim     which campaigns are due; `claim_batch` turns due contacts into "claimed"
            dial attempts, under the concurrency caps, calling windows and the
            do-not-call list
  dial      `dial_attempt`: one claimed attempt to the carrier, committed as "dialing"
            before the carrier hears of it, so that a crash never dials twice
  outcomes  ended calls settle their attempts and the retry policy; `reconcile` reaps
            attempts stuck in a state and completes finished campaigns

and the modules they share or that drive them:

  attempts  the dial-attempt and contact states, and the guarded updates that move them
  pacing    calls-per-second slots per carrier account, shared by every dispatcher
  loop      `Dispatcher`: the thread pool that runs claim, dial and reconcile in a worker
  manage    the API's use cases: create, add contacts, pause / resume / cancel, progress
  contacts  contact lists from CSV or JSON: parsed and validated (no database)
  imports   large lists: the upload kept in the database, imported by a worker job in batches
  windows   calling windows, judged by each callee's local clock
"""
