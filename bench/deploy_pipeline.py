"""Run inside the deployment environment (DeepSparse 1.8, transformers 4.39): answer the given examples with
DeepSparse's own Pipeline pointed at an export folder, as a user deploying it would.

    python deploy_pipeline.py TASK EXPORT_DIR EXAMPLES.json PREDICTIONS.json [pipeline settings as JSON]

TASK is question-answering (examples: id, question, context) or text-classification (examples: id, sentence).
Writes {id: answer text} or {id: label index}. Only the standard library and deepsparse are imported.
"""

import json
import sys


def main():
    task, export_dir, examples_path, predictions_path = sys.argv[1:5]
    settings = json.loads(sys.argv[5]) if len(sys.argv) > 5 else {}
    from deepsparse import Pipeline

    pipeline = Pipeline.create(task=task, model_path=export_dir, **settings)
    with open(examples_path) as handle:
        examples = json.load(handle)
    predictions = {}
    for example in examples:
        if task == "question-answering":
            predictions[example["id"]] = pipeline(question=example["question"], context=example["context"]).answer
        else:
            label = pipeline(sequences=[example["sentence"]]).labels[0]
            predictions[example["id"]] = int(label.split("_")[-1]) if label.startswith("LABEL_") else label
    with open(predictions_path, "w") as handle:
        json.dump(predictions, handle)


if __name__ == "__main__":
    main()
