"""A SparseML Trainer for extractive question answering: evaluate/predict turn the per-feature logits into
answer texts (post_process_function) before computing metrics on them (compute_metrics)."""

import math
import time

from transformers.trainer_utils import PredictionOutput, speed_metrics

from sparsebert.trainer import SparseMLTrainer


class QuestionAnsweringTrainer(SparseMLTrainer):
    def __init__(self, *args, eval_examples=None, post_process_function=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.eval_examples = eval_examples
        self.post_process_function = post_process_function

    def _run_and_post_process(self, dataset, examples, description, ignore_keys, metric_key_prefix, labeled=True):
        # compute_metrics needs the examples, not the raw logits: keep the loop from calling it
        compute_metrics, self.compute_metrics = self.compute_metrics, None
        start_time = time.time()
        try:
            output = self.evaluation_loop(self.get_eval_dataloader(dataset), description=description,
                                          ignore_keys=ignore_keys, metric_key_prefix=metric_key_prefix)
        finally:
            self.compute_metrics = compute_metrics
        predictions = self.post_process_function(examples, dataset, output.predictions)
        scores = compute_metrics(predictions) if labeled and compute_metrics is not None else {}
        metrics = {f"{metric_key_prefix}_{k}": v for k, v in scores.items()}
        batch_size = self.args.eval_batch_size * self.args.world_size
        metrics.update(speed_metrics(metric_key_prefix, start_time, num_samples=output.num_samples,
                                     num_steps=math.ceil(output.num_samples / batch_size)))
        return predictions, metrics

    def evaluate(self, eval_dataset=None, eval_examples=None, ignore_keys=None, metric_key_prefix="eval"):
        dataset = self.eval_dataset if eval_dataset is None else eval_dataset
        examples = self.eval_examples if eval_examples is None else eval_examples
        _, metrics = self._run_and_post_process(dataset, examples, "Evaluation", ignore_keys, metric_key_prefix)
        self.log(metrics)
        self.control = self.callback_handler.on_evaluate(self.args, self.state, self.control, metrics)
        return metrics

    def predict(self, predict_dataset, predict_examples, ignore_keys=None, metric_key_prefix="test", labeled=True):
        """The post-processed predictions (answer texts by question id) with their metrics (timings only for
        questions without answers: labeled=False)."""
        predictions, metrics = self._run_and_post_process(predict_dataset, predict_examples, "Prediction",
                                                          ignore_keys, metric_key_prefix, labeled)
        return PredictionOutput(predictions=predictions, label_ids=None, metrics=metrics)
