from omniopd.trainer.cli import main

main()
