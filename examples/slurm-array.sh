#!/usr/bin/env bash
# One sweep as a SLURM job array: array task i of K runs shard i/K of the jobs, every task into one store on a file
# system the nodes share.  The tasks are numbered 0 to K-1.  From the directory that holds the sweep file:
#
#     sbatch --array=0-15 examples/slurm-array.sh examples/k2-paper.toml /shared/results/k2-paper
#
# Options on sbatch's command line replace the #SBATCH lines below (--cpus-per-task=16 --mem=32G, say).  Resubmit
# the same command to finish what a cancelled or timed-out task left: stored jobs are skipped.
#SBATCH --job-name=fastmlp-sweep
#SBATCH --array=0-3
#SBATCH --cpus-per-task=4
#SBATCH --mem=8G
#SBATCH --time=12:00:00
#SBATCH --output=slurm-%A_%a.out
set -euo pipefail
# the task's cores, not the node's: SLURM may not bind the task to them
export NUMBA_NUM_THREADS="${SLURM_CPUS_PER_TASK:-1}" OMP_NUM_THREADS="${SLURM_CPUS_PER_TASK:-1}"
exec fastmlp sweep "$1" --store "$2" --shard "$SLURM_ARRAY_TASK_ID/$SLURM_ARRAY_TASK_COUNT"
