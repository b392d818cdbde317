"""Moving a store elsewhere: ``cas mirror`` into a plain folder (CVMFS) and ``cas push`` /
``cas pull`` over HTTP."""
