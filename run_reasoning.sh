#!/usr/bin/env bash
# run_reasoning.sh — the Tianchi logic-MCQ flow (the seed's self-reflection SFT recipe), stages 20-25:
#
#   20. answer the train questions with the base model (first pass)       data/logic/answer_train/
#   21. self-reflection: re-ask wrong ones up to max_tries, SFT data       data/logic/reflect/sft.json
#   22. (Q)LoRA SFT on the recovered traces                                model_save/logic_sft/
#   23. merge the LoRA into the full-precision base                        model_save/logic_merged/
#   24. GPTQ 4-bit and 3-bit                                               model_save/logic_gptq_{4,3}bit/
#   20+25. answer the eval split with base / merged / 4-bit / 3-bit and score each (metrics.json, eval_table.md);
#          answer the test split with SUBMIT_MODEL -> competition answer file data/logic/test_<model>/eval/answer.jsonl
#
# Hardware: configs/a100x8.yaml = one 8xA100-80GB node (Llama-3.1-70B-Instruct behind `vllm serve` TP=8 for
# answering; QLoRA on 8 GPUs; hours). configs/tiny.yaml = any CPU, ~5 minutes on 2 cores (a tiny random-weight
# Llama built by src/01_build_tiny_models.py when model_path/<model> is missing; 20 real problems).
#
# Examples:
#   CONFIG=configs/tiny.yaml sh run_reasoning.sh                   # tiny CPU profile end to end
#   VLLM_AUTOSTART=1 sh run_reasoning.sh                           # production; starts/stops `vllm serve` itself
#   sh run_reasoning.sh                                            # production with a server you started
#   sh run_reasoning.sh logic_reflect.max_tries=3 logic_sft.epochs=3   # overrides, scoped per stage
#   FORCE=1 CONFIG=configs/tiny.yaml sh run_reasoning.sh           # redo stages that are already done
#   DRY_RUN=1 VLLM_AUTOSTART=1 sh run_reasoning.sh                 # print every command (server included), run none
# Knobs (environment): CONFIG (default configs/a100x8.yaml), FORCE=1 (force=true to every stage),
# NGPU (default: visible GPUs; >1 launches the SFT with accelerate), VLLM_AUTOSTART=1 (start the answering
# server for stages 20-21 when the profile's backend is vllm_server, stop it before training),
# VLLM_PORT (8000), VLLM_BIN (vllm; e.g. .venv-vllm/bin/vllm: its own venv, requirements-vllm.txt),
# VLLM_HOST (127.0.0.1: the autostarted server listens on this machine only; another
# address warns, since anyone reaching the port could run prompts, and vLLM's key guards /v1 routes only),
# VLLM_API_KEY (when set: the server requires it and the client sends it; read from the environment by both,
# never put on a command line), SUBMIT_MODEL (logic_gptq_4bit: which model writes the test answer file),
# FINAL_DECODING (seed: the eval/test answers sample at T=0.7, top_p 1.0 and re-ask up to 6 calls while no
# letter is extracted, as the seed's final run; greedy: T=0, one call), DRY_RUN=1 (print the commands only).
# Extra arguments are overrides passed to every stage: scope them as section.key=value (logic_answer.*,
# logic_reflect.*, logic_sft.*, logic_merge.*, logic_quantize.*, logic_evaluate.*, common.*).
# Finished stages (DONE.json) are skipped, so a re-run after a failure continues where it stopped.
if [ -z "${BASH_VERSION:-}" ]; then exec bash "$0" "$@"; fi
set -euo pipefail
. "$(dirname "$0")/src/runbook.sh"
runbook_help "$0" "$@"
cd "$(dirname "$0")"

export CONFIG=${CONFIG:-configs/a100x8.yaml}
export PYTHONPATH=src${PYTHONPATH:+:$PYTHONPATH}
FORCE_ARG=(); [ "${FORCE:-0}" = "1" ] && FORCE_ARG=(force=true)
NGPU=${NGPU:-$(python -c "import torch; print(torch.cuda.device_count())")}
SUBMIT_MODEL=${SUBMIT_MODEL:-logic_gptq_4bit}
VLLM_PORT=${VLLM_PORT:-8000}
VLLM_HOST=${VLLM_HOST:-127.0.0.1}
DRY_RUN=${DRY_RUN:-0}
case "${FINAL_DECODING:-seed}" in
  seed)   FINAL_ARGS=(temperature=0.7 top_p=1.0 answer_tries=6) ;;   # vLLM chat defaults + the seed's api_retry
  greedy) FINAL_ARGS=(temperature=0 answer_tries=1) ;;
  *) echo "error: FINAL_DECODING must be seed or greedy, got '$FINAL_DECODING'" >&2; exit 2 ;;
esac
# run CMD...: the command, or with DRY_RUN=1 its shell-quoted line ("+ ...")
run() { if [ "$DRY_RUN" = "1" ]; then printf '+'; printf ' %q' "$@"; printf '\n'; else "$@"; fi; }
get() { python -m arena_distill.config --config "$CONFIG" get "$@"; }
MODEL_DIR=$(get logic_answer.model_dir "$@"); MODEL_DIR=${MODEL_DIR:-$(get common.model_dir "$@")}; MODEL_DIR=${MODEL_DIR:-model_path}
SAVE_DIR=$(get common.save_dir "$@"); SAVE_DIR=${SAVE_DIR:-model_save}
LOGIC_DIR=$(get logic_answer.logic_dir "$@"); LOGIC_DIR=${LOGIC_DIR:-data/logic}
ANSWER_MODEL=$(get logic_answer.model "$@")
SFT_BASE=$(get logic_sft.base_model "$@")
BACKEND=$(get logic_answer.backend "$@"); BACKEND=${BACKEND:-hf}
if [ "$NGPU" -gt 1 ]; then LAUNCH=(accelerate launch --num_processes "$NGPU"); else LAUNCH=(python); fi
echo "== run_reasoning | config $CONFIG | answer model $ANSWER_MODEL ($BACKEND) | SFT base $SFT_BASE | GPUs $NGPU"
stage_start() { echo; echo "== [$(date +%H:%M:%S)] $*"; SECONDS_START=$SECONDS; }
stage_end() { echo "== done in $((SECONDS - SECONDS_START)) s"; }

# --- models: tiny ones are built here when missing; real checkpoints must be in model_path/ ----------------
for M in $ANSWER_MODEL $SFT_BASE; do
  if [ ! -f "$MODEL_DIR/$M/config.json" ]; then
    case "$M" in
      tiny_*) stage_start "build tiny model $M"
              run python src/01_build_tiny_models.py --config "$CONFIG" models="$M" "$@"
              stage_end ;;
      *) if [ "$DRY_RUN" != "1" ] && { [ "$BACKEND" != "vllm_server" ] || [ "$M" = "$SFT_BASE" ]; }; then
           echo "error: $MODEL_DIR/$M/config.json is missing: put the checkpoint there (docs/reasoning.md)" >&2
           exit 2
         fi ;;
    esac
  fi
done

# --- 20-21. first pass + self-reflection (through a vLLM server in production) ----------------------------
VLLM_PID=""
SERVER_ARGS=()
stop_vllm() { if [ -n "$VLLM_PID" ]; then kill "$VLLM_PID" 2>/dev/null || true; wait "$VLLM_PID" 2>/dev/null || true; VLLM_PID=""; fi; }
trap stop_vllm EXIT
if [ "$BACKEND" = "vllm_server" ] && [ "${VLLM_AUTOSTART:-0}" = "1" ] && \
   { [ "${FORCE:-0}" = "1" ] || [ ! -f "$LOGIC_DIR/reflect/DONE.json" ]; }; then
  KEY_NOTE="none"; [ -n "${VLLM_API_KEY:-}" ] && KEY_NOTE="from VLLM_API_KEY"   # never print the key itself
  case "$VLLM_HOST" in
    127.0.0.1|localhost|::1) ;;
    *) GUARD="no VLLM_API_KEY set: nothing is guarded"
       [ -n "${VLLM_API_KEY:-}" ] && GUARD="VLLM_API_KEY guards the /v1 routes only"
       echo "warning: VLLM_HOST=$VLLM_HOST: vllm serve accepts connections from other machines; anyone who reaches" \
            "port $VLLM_PORT can run prompts on these GPUs ($GUARD)" >&2 ;;
  esac
  # --host: vLLM binds every interface without it. --disable-fastapi-docs: no /docs, /redoc, /openapi.json.
  # The key is not an argument (it would show in `ps`): vLLM reads VLLM_API_KEY from the environment itself.
  VLLM_CMD=("${VLLM_BIN:-vllm}" serve "$MODEL_DIR/$ANSWER_MODEL" --served-model-name "$(get logic_answer.served_model_name "$@")"
    --tensor-parallel-size "$NGPU" --max-model-len "$(get logic_answer.max_model_len "$@")" --dtype bfloat16
    --gpu-memory-utilization 0.9 --max-num-seqs 256 --host "$VLLM_HOST" --port "$VLLM_PORT" --disable-fastapi-docs)
  CLIENT_HOST=$VLLM_HOST; case "$VLLM_HOST" in 0.0.0.0|::) CLIENT_HOST=127.0.0.1 ;; esac
  case "$CLIENT_HOST" in *:*) CLIENT_HOST="[$CLIENT_HOST]" ;; esac
  SERVER_ARGS=(server_url="http://$CLIENT_HOST:$VLLM_PORT/v1")
  stage_start "vllm serve $MODEL_DIR/$ANSWER_MODEL (TP=$NGPU, $VLLM_HOST:$VLLM_PORT, key: $KEY_NOTE, log logs/vllm_serve.log)"
  if [ "$DRY_RUN" = "1" ]; then
    run "${VLLM_CMD[@]}"
  else
    mkdir -p logs
    "${VLLM_CMD[@]}" > logs/vllm_serve.log 2>&1 &
    VLLM_PID=$!
    # /health is outside the key-guarded /v1 routes: it answers once the engine is up
    until curl -sf "http://$CLIENT_HOST:$VLLM_PORT/health" > /dev/null; do
      kill -0 "$VLLM_PID" 2>/dev/null || { echo "error: vllm serve exited, see logs/vllm_serve.log" >&2; exit 1; }
      sleep 10
    done
  fi
  stage_end
fi

stage_start "20. first-pass answers (split=train)"
run python src/20_logic_answer.py --config "$CONFIG" split=train "${SERVER_ARGS[@]}" "${FORCE_ARG[@]}" "$@"
stage_end

stage_start "21. self-reflection -> SFT data"
run python src/21_logic_reflect.py --config "$CONFIG" "${FORCE_ARG[@]}" "$@"
stage_end
stop_vllm   # the GPUs are needed for training from here on

# --- 22-24. SFT, merge, GPTQ -------------------------------------------------------------------------------
stage_start "22. (Q)LoRA SFT of $SFT_BASE"
run "${LAUNCH[@]}" src/22_logic_sft.py --config "$CONFIG" "${FORCE_ARG[@]}" "$@"
stage_end

stage_start "23. merge LoRA into $SFT_BASE"
run python src/23_logic_merge.py --config "$CONFIG" "${FORCE_ARG[@]}" "$@"
stage_end

stage_start "24. GPTQ 4-bit and 3-bit"
run python src/24_logic_quantize.py --config "$CONFIG" "${FORCE_ARG[@]}" "$@"
stage_end

# --- 20+25. evaluation: base vs merged vs 4-bit vs 3-bit on the eval split (FINAL_DECODING) ---------------
# backend=auto: vLLM offline on a GPU box for fp and 4-bit; GPTQModel kernels in transformers for 3-bit
# (vLLM's GPTQ kernels serve 4/8 bit only) and for everything on CPU. The fine-tuned models answer in the
# chat template they were trained in (stage 23 writes it into their tokenizer).
for PAIR in "eval_base:$MODEL_DIR/$SFT_BASE" "eval_merged:$SAVE_DIR/logic_merged" \
            "eval_gptq_4bit:$SAVE_DIR/logic_gptq_4bit" "eval_gptq_3bit:$SAVE_DIR/logic_gptq_3bit"; do
  RUN=${PAIR%%:*}; MODEL=${PAIR#*:}
  [ "$DRY_RUN" = "1" ] || [ -f "$MODEL/config.json" ] || { echo "== $RUN: $MODEL missing, skipped"; continue; }
  stage_start "20+25. $RUN ($MODEL)"
  run python src/20_logic_answer.py --config "$CONFIG" "${FORCE_ARG[@]}" "$@" split=eval run_name="$RUN" \
    model="$MODEL" backend=auto n=1 "${FINAL_ARGS[@]}"
  run python src/25_logic_evaluate.py --config "$CONFIG" "${FORCE_ARG[@]}" "$@" run="$RUN"
  stage_end
done

# --- test answer file (competition format) ------------------------------------------------------------------
stage_start "20+25. test answers with $SUBMIT_MODEL"
run python src/20_logic_answer.py --config "$CONFIG" "${FORCE_ARG[@]}" "$@" split=test run_name="test_$SUBMIT_MODEL" \
  model="$SAVE_DIR/$SUBMIT_MODEL" backend=auto n=1 "${FINAL_ARGS[@]}"
run python src/25_logic_evaluate.py --config "$CONFIG" "${FORCE_ARG[@]}" "$@" run="test_$SUBMIT_MODEL"
stage_end

[ "$DRY_RUN" = "1" ] && exit 0
echo
echo "== reasoning flow finished: first pass / recovery in $LOGIC_DIR/reflect/report.json,"
echo "   SFT curve in $SAVE_DIR/logic_sft/metrics.json, comparison in $LOGIC_DIR/eval_table.md,"
echo "   answer file $LOGIC_DIR/test_$SUBMIT_MODEL/eval/answer.jsonl"
cat "$LOGIC_DIR/eval_table.md"
