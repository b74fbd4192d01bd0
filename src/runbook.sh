# src/runbook.sh — shared argument checks of the shell runbooks (sourced, never run on its own).
#
#   runbook_help SCRIPT ARGS...   -h/--help anywhere: print SCRIPT's header comment (its usage) and exit 0
#   runbook_fold FOLD ARGS...     refuse a fold that is not an integer in [0, n_folds) of $CONFIG (with the
#                                 command line's overrides, e.g. common.n_folds=3), before any stage runs
# Why here: without these, `sh run_pipeline.sh --help` took "--help" as the fold and started training.
# -v/--verbose needs no handling here: it is passed on to every stage, where arena_distill.logs reads it.

runbook_help() {
  _script=$1; shift
  for _a in "$@"; do
    case $_a in
      -h|--help)
        # The header comment block (after the shebang, up to the first non-comment line) is the usage.
        sed -n '2,${/^#/!q;s/^# \{0,1\}//;p;}' "$_script"
        echo
        echo "Common switches: -h/--help (this text), -v/--verbose (show third-party library output too;"
        echo "also ARENA_VERBOSE=1)."
        exit 0 ;;
    esac
  done
}

runbook_fold() {
  _fold=$1; shift
  _n=$(PYTHONPATH=src python -m arena_distill.config --config "$CONFIG" get common.n_folds "$@")
  case $_fold in
    ''|*[!0-9]*) echo "error: fold must be an integer in 0..$((_n - 1)) (n_folds $_n in $CONFIG), got '$_fold'" \
                      "(see --help)" >&2; exit 2 ;;
  esac
  if [ "$_fold" -ge "$_n" ]; then
    echo "error: fold $_fold is out of range: $CONFIG has n_folds $_n (folds 0..$((_n - 1)))" >&2
    exit 2
  fi
}
