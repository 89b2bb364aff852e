"""Text in, ids out: inputs, UTF-8 reading, corpus preparation, the id cache, the vocabulary, TBPTT streams,
named corpora. Nothing here prints: functions return what they found and the caller reports it."""
