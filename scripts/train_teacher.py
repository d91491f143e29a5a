"""Train the vision teacher of the fashion-mnist recipe: ``python scripts/train_teacher.py [--field value ...]``."""

import logging

from transformers import HfArgumentParser

from hf_pcoh.teacher_training import TeacherTrainingArguments, train_vision_teacher

if __name__ == "__main__":
    logging.basicConfig(format="%(levelname)s %(name)s: %(message)s", level=logging.INFO)
    (arguments,) = HfArgumentParser(TeacherTrainingArguments).parse_args_into_dataclasses()
    metrics = train_vision_teacher(arguments)
    print(f"teacher saved to {arguments.output_dir}: test accuracy {metrics['test_accuracy']:.4f}, "
          f"{metrics['parameters'] / 1e6:.2f}M parameters")
